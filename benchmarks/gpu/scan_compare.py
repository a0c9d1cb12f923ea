"""Time jaxla's selective-scan kernels over T, with the xla path beside them, in one process.

  python3 -m benchmarks.gpu.scan_compare --label NAME [--T 4096 1024 ...] [--xla-T 4096]
      [--blocks chunk=256 ...] [--save-npz FILE]

Shapes and inputs are those of `benchmarks.kernels.selective_scan` (a Mamba-370M layer: B=4,
D=2048, N=16, bf16, z / D / delta_bias / softplus). For each T, in the order given: the Pallas
kernels' fwd and fwd+bwd (all eight gradients of `sum(out)`), as the median of synchronised
calls and as `pipe` (back-to-back calls: the number to set beside `triton.testing.do_bench`);
`--blocks` sets BlockSizes fields over the defaults (`--no-peak`: no peak memory;
`--peak-only`: only the peak memory, nothing run). Then, where T is in `--xla-T`, the xla path
and the largest relative error between the two over the output and the gradients. `--save-npz`
writes the Pallas output and gradients for the first T (float32) for `benchmarks.gpu.
mamba_ssm_ref bench --check`. To time another version of the kernels in the same device call,
run it from a folder holding that `pallas_kernels` (the working directory comes first on
sys.path) with the repository on PYTHONPATH and another --label. One JSON line per
measurement; `$OUT/scan_<label>.json` at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.kernels.selective_scan import (
    IMPLS,
    block_sizes,
    floor,
    grads_of_sum,
    inputs,
    kernel_op,
)
from benchmarks.timing import jax_peak_bytes, time_jax, time_jax_pipelined
from jaxla.testing import rel_error
from pallas_kernels.selective_scan import BlockSizes

GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias")


def pallas_with(blocks: dict, T: int):
    """The Pallas kernels on the op's default blocks for this shape with `blocks` over them."""
    if not blocks:
        return IMPLS["pallas"]
    return kernel_op(block_sizes(T, blocks))


def parse_blocks(items) -> dict:
    """`["chunk=256", "prefetch=true"]` -> `{"chunk": 256, "prefetch": True}`."""
    fields = {f.name: f.type for f in dataclasses.fields(BlockSizes)}
    blocks = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise ValueError(
                f"--blocks takes NAME=VALUE with NAME in {sorted(fields)}, got {item!r}")
        blocks[name] = value.lower() in ("1", "true") if fields[name] == "bool" else int(value)
    return blocks


def measure(impl: str, T: int, args, iters: int, op=None, peak: bool = True):
    """Times `op` (default `IMPLS[impl]`): fwd and fwd+bwd (`peak`: and XLA's peak memory, which
    compiles each program again)."""
    row = {"impl": impl, "T": T}
    results = {}
    op = op or IMPLS[impl]
    for mode in ("fwd", "fwd+bwd"):
        fn = op if mode == "fwd" else grads_of_sum(op)
        start = time.perf_counter()
        jitted = jax.jit(fn)
        results[mode] = jax.block_until_ready(jitted(*args))
        compile_s = time.perf_counter() - start
        row[mode] = {"ms": time_jax(jitted, *args, warmup=2, iters=iters),
                     "pipe_ms": time_jax_pipelined(jitted, *args, calls=max(iters, 20)),
                     "compile_s": round(compile_s, 1), "floor_ms": floor(T, mode)}
        peak_bytes = jax_peak_bytes(fn, *args) if peak else None
        row[mode]["peak_gib"] = None if peak_bytes is None else peak_bytes / 2**30
        print(json.dumps({"event": "timed", "impl": impl, "T": T, "mode": mode, **row[mode]}),
              flush=True)
    return row, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True)
    parser.add_argument("--T", type=int, nargs="+", default=[4096, 1024, 2048, 8192])
    parser.add_argument("--xla-T", type=int, nargs="*", default=[4096])
    parser.add_argument("--save-npz", type=Path)
    parser.add_argument("--blocks", nargs="*", default=[], metavar="NAME=VALUE",
                        help="BlockSizes fields over the N=16 defaults, e.g. chunk=256")
    peak = parser.add_mutually_exclusive_group()
    peak.add_argument("--no-peak", action="store_true",
                      help="skip the peak memory (saves a second compile per program)")
    peak.add_argument("--peak-only", action="store_true",
                      help="only the peak memory of the Pallas programs: compiles, runs nothing")
    args_ns = parser.parse_args(argv)
    blocks = parse_blocks(args_ns.blocks)
    print(f"[{args_ns.label}] jax {jax.__version__} on {jax.devices()[0].device_kind}",
          flush=True)

    if args_ns.peak_only:
        for T in args_ns.T:
            args, op = inputs(T), pallas_with(blocks, T)
            for mode, fn in (("fwd", op), ("fwd+bwd", grads_of_sum(op))):
                peak_bytes = jax_peak_bytes(fn, *args)
                gib = None if peak_bytes is None else peak_bytes / 2**30
                print(json.dumps({"event": "peak", "T": T, "mode": mode, "peak_gib": gib}),
                      flush=True)
        return

    rows = []
    for i, T in enumerate(args_ns.T):
        args = inputs(T)
        row, got = measure("pallas", T, args, iters=30, op=pallas_with(blocks, T),
                           peak=not args_ns.no_peak)
        row["blocks"] = blocks
        if i == 0 and args_ns.save_npz is not None:
            # the gradients of sum(out): a cotangent of ones
            arrays = {"out": got["fwd"], **dict(zip(GRAD_NAMES, got["fwd+bwd"], strict=True))}
            np.savez(args_ns.save_npz, **{k: np.asarray(v, np.float32)
                                          for k, v in arrays.items()})
        if T in args_ns.xla_T:
            xla_row, want = measure("xla", T, args, iters=10)
            pairs = zip([got["fwd"], *got["fwd+bwd"]], [want["fwd"], *want["fwd+bwd"]],
                        strict=True)
            errors = [rel_error(a, b) for a, b in pairs]
            row["error_vs_xla"] = dict(zip(("out",) + GRAD_NAMES, errors, strict=True))
            row["xla"] = {m: xla_row[m] for m in ("fwd", "fwd+bwd")}
            print(json.dumps({"event": "error_vs_xla", "T": T, **row["error_vs_xla"]}),
                  flush=True)
        rows.append(row)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, f"scan_{args_ns.label}.json").write_text(json.dumps(rows, indent=1))
    print(f"[{args_ns.label}] {'T':>6}{'fwd ms':>9}{'f+b ms':>9}{'fwd pipe':>9}{'f+b pipe':>9}"
          f"{'xla fwd':>9}{'xla f+b':>9}{'max err':>9}")
    for r in rows:
        xla = r.get("xla")
        xf, xb = (f"{xla['fwd']['ms']:9.3f}", f"{xla['fwd+bwd']['ms']:9.3f}") if xla else ("-",
                                                                                          "-")
        err = f"{max(r['error_vs_xla'].values()):9.2e}" if "error_vs_xla" in r else "-"
        print(f"[{args_ns.label}] {r['T']:>6}{r['fwd']['ms']:9.3f}{r['fwd+bwd']['ms']:9.3f}"
              f"{r['fwd']['pipe_ms']:9.3f}{r['fwd+bwd']['pipe_ms']:9.3f}{xf:>9}{xb:>9}{err:>9}")


if __name__ == "__main__":
    main()
