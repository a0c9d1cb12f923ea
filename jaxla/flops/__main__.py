"""`python -m jaxla.flops [--out DIR] [--no-plots]`: the FLOP report (`jaxla.flops.report`)."""

import sys

from jaxla.flops.report.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
