"""``python3 -m lab ...`` (what lab/lab.py runs): see lab/cli.py."""

import sys

from lab.cli import main

sys.exit(main())
