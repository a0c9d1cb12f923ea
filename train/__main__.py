"""`python -m train`: see `python -m train --help` and train/loop.py."""

import sys

from .loop import main

if __name__ == "__main__":
    sys.exit(main())
