"""`python -m ops.stack <command>`: see ops/stack/cli.py."""

import sys

from ops.stack.cli import main

sys.exit(main())
