"""Tune the selective scan kernels on the GPU: `python -m benchmarks.gpu.selective_scan_tune`.

Times a handful of `BlockSizes` variants (channel block, unroll / sub-chunk, chunk, num_warps,
num_stages, prefetch) at the Mamba-370M layer shape B=4, T=4096, D=2048, N=16 (bf16, z, D,
delta_bias, softplus), checks each against jaxla's xla path (largest relative error of the output
and the eight gradients), and prints a table sorted by fwd+bwd time. Forward and backward
parameters are independent: "bwd ms" = fwd+bwd - fwd (forward with saved states), so the best
forward and the best backward settings can be combined. Stops starting new variants after
`--budget` seconds (compiles dominate). Writes `selective_scan_tune.json` under $OUT when set.

Options: --T 4096 --budget 170 --only name1 name2 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.kernels.selective_scan import MAMBA_SSM_MS, inputs
from benchmarks.timing import jax_peak_bytes, time_jax
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels.selective_scan import BlockSizes, selective_scan

B = BlockSizes
# Most informative first: the budget may cut the tail.
VARIANTS = {
    "default": B(),  # block_d 32, 4 warps, unroll 8, chunk 64, sub 4, prefetch
    "bd16-w2": B(block_d=16, num_warps=2, block_d_bwd=16, num_warps_bwd=2),
    "bd64-w8": B(block_d=64, num_warps=8, block_d_bwd=64, num_warps_bwd=8),
    "bd16-w1": B(block_d=16, num_warps=1, block_d_bwd=16, num_warps_bwd=1),
    "s8-nopf": B(sub=8, prefetch_bwd=False),
    "flat-s8": B(chunk=8, sub=8, prefetch_bwd=False),
    "bd32-w8": B(num_warps=8, num_warps_bwd=8),
    "u4-s2": B(unroll=4, sub=2),
    "u16": B(unroll=16),
    "nopf": B(prefetch=False, prefetch_bwd=False),
    "stages3": B(num_stages=3, num_stages_bwd=3),
    "s8": B(sub=8),
    "bd8-w1": B(block_d=8, num_warps=1, block_d_bwd=8, num_warps_bwd=1),
    "c256": B(chunk=256),
    "bd64-w4": B(block_d=64, block_d_bwd=64),
}


def _kernel_fn(bs):
    def fn(u, delta, A, Bm, Cm, D, z, bias):
        out, _ = selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias=bias, delta_softplus=True,
                                block_sizes=bs)
        return out
    return fn


def _xla_fn(u, delta, A, Bm, Cm, D, z, bias):
    return ops.selective_scan(u, delta, A, Bm, Cm, D, z, delta_bias=bias, delta_softplus=True,
                              implementation="xla")[0]


def _grad(fn):
    return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=tuple(range(8)))


def run_variant(name, bs, args, ref):
    start = time.perf_counter()
    fwd, fwd_bwd = jax.jit(_kernel_fn(bs)), jax.jit(_grad(_kernel_fn(bs)))
    got = [fwd(*args)] + list(fwd_bwd(*args))  # compiles both
    compile_s = time.perf_counter() - start
    error = max(rel_error(a, b) for a, b in zip(got, ref))
    fwd_ms = time_jax(fwd, *args)
    total_ms = time_jax(fwd_bwd, *args)
    peak = jax_peak_bytes(_grad(_kernel_fn(bs)), *args)
    return {"name": name, "fwd_ms": fwd_ms, "fwd_bwd_ms": total_ms, "bwd_ms": total_ms - fwd_ms,
            "error": error, "ok": error < 2e-2, "compile_s": compile_s,
            "peak_gib": None if peak is None else peak / 2**30,
            "block_sizes": dataclasses.asdict(bs)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for all variants")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="variants to run")
    args_ns = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, T={args_ns.T}", flush=True)

    args = inputs(args_ns.T)
    t0 = time.perf_counter()
    ref = [jax.jit(_xla_fn)(*args)] + list(jax.jit(_grad(_xla_fn))(*args))
    xla_ms = (time_jax(jax.jit(_xla_fn), *args, iters=10),
              time_jax(jax.jit(_grad(_xla_fn)), *args, iters=10))
    print(f"xla path: fwd {xla_ms[0]:.3f} ms, fwd+bwd {xla_ms[1]:.3f} ms "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)

    results, skipped = [], []
    start = time.perf_counter()
    for name in args_ns.only or VARIANTS:
        if time.perf_counter() - start > args_ns.budget:
            skipped.append(name)
            continue
        try:
            r = run_variant(name, VARIANTS[name], args, ref)
        except Exception as e:  # noqa: BLE001 - a variant that fails to compile or run
            traceback.print_exc()
            r = {"name": name, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                 "block_sizes": dataclasses.asdict(VARIANTS[name])}
        results.append(r)
        if "failed" in r:
            print(f"{name}: FAILED {r['failed']}", flush=True)
        else:
            print(f"{name}: fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms, "
                  f"error {r['error']:.2e}, compile {r['compile_s']:.0f}s", flush=True)

    anchor = MAMBA_SSM_MS.get(args_ns.T)
    good = sorted((r for r in results if "failed" not in r), key=lambda r: r["fwd_bwd_ms"])
    lines = [f"selective_scan tuning, B=4 T={args_ns.T} D=2048 N=16 bf16 on "
             f"{jax.devices()[0].device_kind}; xla path fwd {xla_ms[0]:.3f} / fwd+bwd "
             f"{xla_ms[1]:.3f} ms" + (f"; mamba_ssm (anchors.md) {anchor[0]} / {anchor[1]} ms"
                                      if anchor else ""),
             f"{'variant':<12}{'fwd ms':>9}{'bwd ms':>9}{'f+b ms':>9}{'vs mamba':>9}"
             f"{'vs xla':>8}{'error':>10}{'GiB':>7}  ok"]
    for r in good:
        vs = f"{anchor[1] / r['fwd_bwd_ms']:.2f}x" if anchor else "-"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['name']:<12}{r['fwd_ms']:9.3f}{r['bwd_ms']:9.3f}{r['fwd_bwd_ms']:9.3f}"
                     f"{vs:>9}{xla_ms[1] / r['fwd_bwd_ms']:7.1f}x{r['error']:10.2e}{peak:>7}"
                     f"  {'yes' if r['ok'] else 'NO'}")
    for r in results:
        if "failed" in r:
            lines.append(f"{r['name']:<12} FAILED: {r['failed']}")
    if skipped:
        lines.append(f"skipped (budget): {', '.join(skipped)}")
    ok = [r for r in good if r["ok"]]
    if ok:
        best_f = min(ok, key=lambda r: r["fwd_ms"])
        best_b = min(ok, key=lambda r: r["bwd_ms"])
        lines.append(f"best fwd: {best_f['name']}; best bwd: {best_b['name']}; best total: "
                     f"{ok[0]['name']} = {ok[0]['block_sizes']}")
    table = "\n".join(lines)
    print(table)
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "selective_scan_tune.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"T": args_ns.T, "xla_ms": xla_ms, "results": results,
                                    "skipped": skipped, "table": table}, indent=1))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
