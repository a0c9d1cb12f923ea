"""`python -m jaxla.flops [--out DIR] [--no-plots]`: the FLOP report (CPU is the reference).

XLA's lowered cost analysis is unavailable on the CUDA plugin and its GPU counts treat custom
calls as -1, so the report runs on the CPU backend unless JAX_PLATFORMS says otherwise.
"""

import argparse
import importlib.util
import os
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxla.flops", description=__doc__)
    parser.add_argument("--out", default="docs/flops", help="output folder (REPORT.md + PNGs)")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip the PNG plots (which need matplotlib: pip install jaxla[plots])")
    args = parser.parse_args(argv)
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        parser.error("the plots need matplotlib, which is not installed: pip install "
                     "'jaxla[plots]', or pass --no-plots")
    if not os.environ.get("JAX_PLATFORMS"):
        import jax

        jax.config.update("jax_platforms", "cpu")  # before any backend is initialised

    from jaxla.flops.report import build

    start = time.time()
    print(f"jaxla.flops report -> {args.out}")
    build.build(args.out, plots=not args.no_plots)
    print(f"wrote {os.path.join(args.out, 'REPORT.md')} in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
