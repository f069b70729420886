"""``python -m bayessparse`` (and ``torchrun ... -m bayessparse train``): the command line."""

import sys

from bayessparse.cli import main

sys.exit(main())
