"""`python -m worker` runs the routing daemon."""

import sys

from worker.main import main

sys.exit(main())
