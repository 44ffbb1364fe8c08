"""`python -m hub.stack <command>`: see hub/stack/cli.py."""

import sys

from hub.stack.cli import main

sys.exit(main())
