"""``python -m ociresolve.cli``."""

import sys

from ociresolve.cli import main

sys.exit(main())
