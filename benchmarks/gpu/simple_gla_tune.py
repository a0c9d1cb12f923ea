"""Time block-size / launch variants of the simple GLA kernels on the GPU, in one run (a tuning
tool: the speed of jaxla beside its anchors is `python -m benchmarks.kernels`, which runs them;
this runs none).

`PYTHONPATH=. python3 -m benchmarks.gpu.simple_gla_tune [--gated] [--only NAME ...]
    [--shape anchor] [--dims T=2048 ...]`

On the dense inputs of a registered case (`benchmarks/kernels/registry.py`): "lightning"
(FLA's decays, `registry.LIGHTNING_LAYER`; B=4, T=4096, H=16, K=V=128 bf16), or with `--gated`
"simple_gla" (a data-dependent gate g [B, T, H] with its gradient: the backward then also writes
states and gate terms); `--dims` overrides some of the shape's dims (a CPU check of the script).
For each variant the forward and forward+backward (gradients of q, k, v (and g) for
sum(o * do)) are checked against the xla path and timed. Prints one line per variant as it goes
and a table sorted by fwd+bwd time last; with $OUT set, writes $OUT/simple_gla_tune.json.
Times: `ms` = median of synchronised calls (benchmarks/timing.time_jax), `pipe` = mean of 50
back-to-back calls (GPU time without per-call sync).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.kernels import registry
from benchmarks.timing import time_jax, time_jax_pipelined
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels import simple_gla as kernels

D = 128  # the head dims the variants below are written for (tiles clamp to smaller heads)
BS = kernels.BlockSizes

# name -> BlockSizes. The first is the default; the rest change one or two things each.
VARIANTS = {
    "default": BS.get_default(head_dim_k=D, head_dim_v=D, dtype=jnp.bfloat16),
    "fuse_bwd": BS.get_default(head_dim_k=D, head_dim_v=D, dtype=jnp.bfloat16, fuse_bwd=True),
    "tiles32": BS(block_v=32, block_k_dq=32, block_k_dk=32, block_v_dv=32),
    "tiles32_fuse": BS(block_v=32, block_k_dq=32, block_k_dk=32, block_v_dv=32, fuse_bwd=True),
    # Whole heads per program: fewer FLOPs (no recomputed q k^T / do v^T), fewer programs.
    "fwd_bv128": BS(block_v=128, num_warps_fwd=8),
    "tiles128_fuse": BS(block_v=128, block_k_dq=128, block_k_dk=128, block_v_dv=128,
                        fuse_bwd=True, num_warps_fwd=8, num_warps_bwd=8),
    "warps8": BS(num_warps_fwd=8, num_warps_bwd=8),
    "warps8_fuse": BS(num_warps_fwd=8, num_warps_bwd=8, fuse_bwd=True),
    "stages1": BS(num_stages_fwd=1, num_stages_bwd=1),
    "stages3": BS(num_stages_fwd=3, num_stages_bwd=3),
    "chunk128": BS(chunk=128, num_warps_fwd=8, num_warps_bwd=8),
    "chunk128_bv32": BS(chunk=128, block_v=32, block_k_dq=32, block_k_dk=32, block_v_dv=32,
                        num_warps_fwd=8, num_warps_bwd=8),
    "chunk32": BS(chunk=32),
}


def inputs(gated: bool, shape: str, dims):
    """dims, q, k, v, g (None for lightning) of the registered case and a random bf16 `do`."""
    dims, x = registry.case_inputs("simple_gla" if gated else "lightning", shape, dims=dims)
    do = jax.random.normal(jax.random.key(1), x["v"].shape, jnp.bfloat16)
    return dims, x["q"], x["k"], x["v"], x.get("g"), do


def functions(block_sizes, gated, H):
    """(forward, forward+backward) jitted for one implementation: block_sizes None = xla.
    Lightning: the constant decay g_gamma of `registry.LIGHTNING_LAYER`; gated: g only."""
    g_gamma = None if gated else ops.lightning_decay(H, **registry.LIGHTNING_LAYER)

    def fn(q, k, v, g):
        if block_sizes is None:
            return ops.simple_gla(q, k, v, g, g_gamma=g_gamma, implementation="xla")[0]
        return kernels.simple_gla(q, k, v, g, g_gamma, block_sizes=block_sizes)[0]

    def fwd_bwd(q, k, v, g, do):
        if gated:
            _, vjp = jax.vjp(fn, q, k, v, g)
        else:
            _, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, g), q, k, v)
        return vjp(do)

    return jax.jit(fn), jax.jit(fwd_bwd)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gated", action="store_true", help="data-dependent gate with gradient")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="variants to run")
    parser.add_argument("--shape", default="anchor", help="a registered shape of the op")
    parser.add_argument("--dims", nargs="+", type=registry.dims_item, default=[],
                        metavar="NAME=INT", help="override dims of the shape, e.g. T=2048")
    args = parser.parse_args(argv)
    try:
        dims, q, k, v, g, do = inputs(args.gated, args.shape, args.dims)
    except ValueError as e:
        parser.error(f"argument --shape/--dims: {e}")
    label = " ".join(f"{name}={value}" for name, value in dims.items())
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {label} bf16, "
          f"{'gated (g)' if args.gated else 'lightning (g_gamma)'}", flush=True)

    fwd_ref, bwd_ref = functions(None, args.gated, dims["H"])
    o_ref = np.asarray(fwd_ref(q, k, v, g), np.float32)
    grads_ref = [np.asarray(x, np.float32) for x in bwd_ref(q, k, v, g, do)]

    results = []
    for name in args.only or VARIANTS:
        bs = VARIANTS[name]
        row = {"variant": name, "block_sizes": dataclasses.asdict(bs)}
        start = time.perf_counter()
        try:
            fwd, fwd_bwd = functions(bs, args.gated, dims["H"])
            o = fwd(q, k, v, g)
            grads = fwd_bwd(q, k, v, g, do)
            row["compile_s"] = time.perf_counter() - start
            row["err_fwd"] = rel_error(o, o_ref)
            row["err_bwd"] = max(rel_error(a, b) for a, b in zip(grads, grads_ref, strict=True))
            row["fwd_ms"] = time_jax(fwd, q, k, v, g)
            row["fwd_pipe"] = time_jax_pipelined(fwd, q, k, v, g)
            row["fwd_bwd_ms"] = time_jax(fwd_bwd, q, k, v, g, do)
            row["fwd_bwd_pipe"] = time_jax_pipelined(fwd_bwd, q, k, v, g, do)
            print(f"{name:>14}: fwd {row['fwd_ms']:.3f} ms (pipe {row['fwd_pipe']:.3f}), fwd+bwd "
                  f"{row['fwd_bwd_ms']:.3f} ms (pipe {row['fwd_bwd_pipe']:.3f}), err "
                  f"{row['err_fwd']:.1e}/{row['err_bwd']:.1e}, {row['compile_s']:.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - e.g. shared memory overflow: record, keep going
            row["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
            print(f"{name:>14}: FAILED {row['error']}", flush=True)
        results.append(row)

    ok = sorted((r for r in results if "error" not in r), key=lambda r: r["fwd_bwd_pipe"])
    print("\nvariant          fwd ms   fwd pipe  fwd+bwd ms  f+b pipe   err fwd  err bwd")
    for r in ok:
        flag = "  BAD" if max(r["err_fwd"], r["err_bwd"]) > 5e-3 else ""
        print(f"{r['variant']:<14} {r['fwd_ms']:8.3f} {r['fwd_pipe']:9.3f} {r['fwd_bwd_ms']:11.3f} "
              f"{r['fwd_bwd_pipe']:9.3f}  {r['err_fwd']:8.1e} {r['err_bwd']:8.1e}{flag}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<14} failed: {r['error'][:150]}")
    if ok:
        best_fwd = min(ok, key=lambda r: r["fwd_pipe"])
        print(f"best fwd: {best_fwd['variant']} ({best_fwd['fwd_pipe']:.3f} ms); best fwd+bwd: "
              f"{ok[0]['variant']} ({ok[0]['fwd_bwd_pipe']:.3f} ms)")
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / f"simple_gla_tune{'_gated' if args.gated else ''}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "dims": dims}
        path.write_text(json.dumps({**meta, "rows": results}, indent=1))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
