"""Kernel benchmark: `python -m benchmarks.kernels --op gla [--T 1024 4096] [--out DIR]`.

Each op module in this package (`gla`, `simple_gla`, `selective_scan`) defines
`DEFAULT_T` and `rows(T, modes) -> list[dict]`, one dict per implementation and mode with keys
`impl`, `mode` ("fwd" or "fwd+bwd"), `ms`, and optionally `peak_gib`, `floor_ms`, `error` (a
correctness number against a reference, or a message when the variant could not run). This
runner prints one table per mode, then writes `<op>.json` and `<op>.png` (ms vs T, log-log).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import jax

OPS = ("gla", "simple_gla", "selective_scan")
MODES = ("fwd", "fwd+bwd")


def _device() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", str(d))


def _table(rows, mode):
    rows = [r for r in rows if r["mode"] == mode]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    Ts = sorted({r["T"] for r in rows})
    cell = {(r["impl"], r["T"]): r for r in rows}
    lines = [f"{mode} ms (peak GiB)".ljust(28) + "".join(f"T={T}".rjust(18) for T in Ts)]
    for impl in impls:
        line = impl.ljust(28)
        for T in Ts:
            r = cell.get((impl, T))
            if r is None or r.get("ms") is None:
                text = "-" if r is None else "failed"
            else:
                mem = f" ({r['peak_gib']:.2f})" if r.get("peak_gib") is not None else ""
                text = f"{r['ms']:.3f}{mem}"
            line += text.rjust(18)
        lines.append(line)
    floors = {T: cell[k]["floor_ms"] for k in cell for T in [k[1]] if cell[k].get("floor_ms")}
    if floors:
        lines.append("memory/FLOP floor".ljust(28) + "".join(
            (f"{floors[T]:.3f}" if T in floors else "-").rjust(18) for T in Ts))
    return "\n".join(lines)


def _plot(rows, op, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODES), figsize=(6 * len(MODES), 4.5))
    for ax, mode in zip(axes, MODES, strict=True):
        sub = [r for r in rows if r["mode"] == mode and r.get("ms") is not None]
        for impl in dict.fromkeys(r["impl"] for r in sub):
            pts = sorted((r["T"], r["ms"]) for r in sub if r["impl"] == impl)
            ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{op} {mode} on {_device()}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", choices=OPS, required=True)
    parser.add_argument("--T", type=int, nargs="+", help="sequence lengths (default: the op's)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for JSON and PNG")
    args = parser.parse_args(argv)

    module = importlib.import_module(f"benchmarks.kernels.{args.op}")
    Ts = args.T or module.DEFAULT_T
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": _device(), "jax": jax.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"), "argv": sys.argv}
    rows = []
    for T in Ts:
        start = time.perf_counter()
        for r in module.rows(T, args.modes):
            rows.append({"op": args.op, "T": T, **r})
        print(f"[{args.op}] T={T} done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        # Written after every T, so a run cut short keeps what it measured.
        (args.out / f"{args.op}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    _plot(rows, args.op, args.out / f"{args.op}.png")
    print(f"{args.op} on {meta['device']}, jax {meta['jax']}, {meta['date']}")
    for mode in args.modes:
        print(_table(rows, mode))


if __name__ == "__main__":
    main()
