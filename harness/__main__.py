"""`python -m harness`: see harness.front.cli."""

import sys

from .front.cli import main

sys.exit(main())
