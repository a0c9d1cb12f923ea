"""Which launch configuration of the GLA kernels is fastest (a tuning tool: the speed of jaxla
beside its anchors is `python -m benchmarks.kernels`, which runs them; this runs none).

    python -m benchmarks.gpu.gla_tune [--shape anchor] [--dims T=2048 ...] [--families ...]
        [--smoke]

On the dense inputs of a registered GLA shape (`benchmarks/kernels/registry.py`; default
"anchor": B=4, T=4096, H=16, K=V=128, bf16, g = logsigmoid(randn)/16; `--dims` overrides some of
its dims) this times each of the four chunk kernels (`--families` picks some; the others keep
the defaults) on its own over a handful of variants (tiles, num_warps, num_stages, chunks per
program), then the whole op (fwd, fwd+bwd) with the default and with the fastest variant of each
kernel; every time is the mean of 30 back-to-back calls with one sync
(`timing.time_jax_pipelined`, as `benchmarks.kernels` times). Correctness: the default op is
compared with the xla path; every variant's kernel output with the default configuration's. It
also times the exact intra-chunk path (taken by chunks with a decay span > 60, i.e. very strong
gates) and the matmul path compiled without it. Writes `$OUT/gla_tune.json` when OUT is set.
About 2-4 minutes on an H100, compiles included. `--smoke` checks this script on a CPU: B=1
T=256 H=2 K=V=32 in interpret mode, two variants per kernel.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.kernels import registry
from benchmarks.timing import time_jax_pipelined
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels._common import default_interpret
from pallas_kernels.gla import BlockSizes, chunk_gla
from pallas_kernels.gla.chunk_bwd import chunk_grads
from pallas_kernels.gla.chunk_fwd import chunk_fwd, chunk_output
from pallas_kernels.gla.chunk_state import state_scan

OP = "gla"
SMOKE_DIMS = dict(B=1, T=256, H=2, K=32, V=32)
INTERPRET = default_interpret()
MISMATCH = 1e-2  # a variant whose kernel output differs more from the default's is wrong

# Each family's table starts with the op's default configuration for the shape
# (`BlockSizes.get_default`), then these variants (duplicates of the default dropped).
STATE_VARIANTS = [  # (block_k_state, block_v_state, num_warps, num_stages)
    (32, 128, 4, 2), (32, 128, 4, 3), (64, 128, 4, 2), (64, 128, 4, 3), (32, 128, 2, 3),
    (64, 128, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (16, 128, 4, 3), (16, 256, 4, 3),
    (16, 64, 4, 3),
]
SMOKE_STATE_VARIANTS = [(16, 32, 4, 2), (32, 16, 4, 3)]
# Per-chunk kernels: (num_warps, num_stages, chunks_per_program, block_k, block_v); block_v
# is clipped to V, so at K=V=128 the 256 variants repeat the 128 ones and are dropped. The
# offline compile (Triton 3.6, sm_90) at K=V=128: output 218 registers with 8 warps, no
# spills; grads 255 registers, ~90 B spilled; 4 warps spill kilobytes in both.
OUTPUT_VARIANTS = [
    (8, 2, 1, 32, 128), (8, 3, 1, 32, 128), (8, 2, 2, 32, 128), (8, 3, 4, 32, 128),
    (8, 2, 1, 64, 128), (8, 2, 1, 16, 128), (4, 2, 1, 32, 128), (16, 2, 1, 32, 128),
    (8, 2, 1, 32, 64), (4, 2, 1, 32, 64), (8, 2, 1, 32, 256), (16, 2, 1, 32, 256),
    (8, 2, 1, 16, 256),
]
SMOKE_OUTPUT_VARIANTS = [(8, 2, 1, 32, 32), (4, 2, 2, 16, 16)]
GRAD_VARIANTS = [
    (4, 2, 1, 32, 128), (8, 2, 1, 32, 128), (8, 1, 1, 32, 128), (8, 3, 1, 32, 128),
    (8, 2, 1, 16, 128), (8, 2, 1, 64, 128), (16, 2, 1, 32, 128), (4, 3, 1, 32, 128),
    (8, 2, 1, 32, 64), (4, 2, 1, 32, 64), (8, 2, 1, 16, 256), (16, 2, 1, 16, 256),
]  # chunks_per_program_bwd > 1 is refused (wrong gradients on the GPU, see config.py)
SMOKE_GRAD_VARIANTS = [(8, 2, 1, 32, 32), (4, 2, 1, 16, 16)]
FAMILIES = ("state_fwd", "state_bwd", "output", "grads")


def with_default_first(default_variant, variants, *, k_at: int, v_at: int, K: int, V: int):
    """`[default_variant, *variants]` with the K and V tiles (tuple positions k_at, v_at) clipped
    to the head dims and repeats dropped, so that each table's first row is the op's own
    configuration for the shape."""
    out = []
    for p in [default_variant, *variants]:
        p = list(p)
        p[k_at], p[v_at] = min(p[k_at], K), min(p[v_at], V)
        if tuple(p) not in out:
            out.append(tuple(p))
    return out


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def inputs(shape: str, dims):
    """dims, q, k, v, g of the registered case and a random bf16 cotangent `do`."""
    dims, x = registry.case_inputs(OP, shape, dims=dims)
    do = jax.random.normal(jax.random.key(1), x["v"].shape, jnp.bfloat16)
    return dims, x["q"], x["k"], x["v"], x["g"], do


def timed(name, fn, *args, reference=None):
    """(ms, relative error vs reference or None, message); failures are reported, not raised."""
    start = time.perf_counter()
    try:
        run = jax.jit(fn)
        out = jax.block_until_ready(run(*args))
        # Back-to-back calls, one sync (as benchmarks.kernels times): a sync per call added its
        # host latency to sub-millisecond kernels and reordered variants between runs.
        ms = time_jax_pipelined(run, *args, calls=30)
    except Exception as e:  # noqa: BLE001
        log(f"  {name}: FAILED {type(e).__name__}: {str(e)[:300]}")
        return None, None, f"{type(e).__name__}: {str(e)[:200]}", None
    err = None
    if reference is not None:
        leaves = jax.tree.leaves(out)
        err = max(rel_error(a, b) for a, b in zip(leaves, jax.tree.leaves(reference), strict=True))
    log(f"  {name}: {ms:.3f} ms" + (f", rel err {err:.1e}" if err is not None else "")
        + f" ({time.perf_counter() - start:.1f}s incl. compile)")
    return ms, err, None, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="anchor",
                        choices=[s.name for s in registry.OPS[OP].shapes],
                        help="a registered GLA shape (benchmarks/kernels/registry.py)")
    parser.add_argument("--dims", nargs="+", type=registry.dims_item, default=[],
                        metavar="NAME=INT", help="override dims of the shape, e.g. T=2048")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES),
                        help="the kernel tables to time (the others keep the defaults)")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script on a CPU (tiny dims, two variants per kernel)")
    opts = parser.parse_args(argv)
    state_variants, output_variants, grad_variants = (
        (SMOKE_STATE_VARIANTS, SMOKE_OUTPUT_VARIANTS, SMOKE_GRAD_VARIANTS) if opts.smoke
        else (STATE_VARIANTS, OUTPUT_VARIANTS, GRAD_VARIANTS))
    try:
        smoke = list(SMOKE_DIMS.items()) if opts.smoke else []
        dims, q, k, v, g, do = inputs(opts.shape, smoke + opts.dims)
    except ValueError as e:
        parser.error(f"argument --dims: {e}")
    B, T, H, K, V = (dims[d] for d in "BTHKV")
    h0 = jnp.zeros((B, H, K, V), jnp.float32)
    default = BlockSizes.get_default(head_dim_k=K, head_dim_v=V)
    d = default
    state_variants = with_default_first(
        (d.block_k_state, d.block_v_state, d.num_warps_state, d.num_stages_state),
        state_variants, k_at=0, v_at=1, K=K, V=V)
    output_variants = with_default_first(
        (d.num_warps_fwd, d.num_stages_fwd, d.chunks_per_program_fwd, d.block_k, d.block_v),
        output_variants, k_at=3, v_at=4, K=K, V=V)
    grad_variants = with_default_first(
        (d.num_warps_bwd, d.num_stages_bwd, d.chunks_per_program_bwd, d.block_k, d.block_v),
        grad_variants, k_at=3, v_at=4, K=K, V=V)
    scale = K**-0.5
    results = {"device": str(jax.devices()[0].device_kind), "default": dataclasses.asdict(default),
               "kernels": {}}

    log("reference: xla path and the default pallas op")
    o_x = jax.jit(lambda q, k, v, g: ops.gla(q, k, v, g, implementation="xla")[0])(q, k, v, g)
    o_p = jax.jit(lambda q, k, v, g: chunk_gla(q, k, v, g, block_sizes=default)[0])(q, k, v, g)
    results["default_vs_xla"] = rel_error(o_p, o_x)
    log(f"  default pallas vs xla: o rel err {results['default_vs_xla']:.2e}")

    # Per-kernel inputs from the default configuration.
    _, _, hs = jax.jit(functools.partial(chunk_fwd, scale=scale, block_sizes=default,
                                         interpret=INTERPRET))(q, k, v, g, h0)
    dhs, _ = jax.jit(functools.partial(
        state_scan, chunk=64, reverse=True, scale=scale, block_k=default.block_k_state,
        block_v=default.block_v_state, num_warps=default.num_warps_state,
        num_stages=default.num_stages_state, interpret=INTERPRET, name="ref"))(q, do, g, h0)

    tables = {}

    def run_family(family, variants, make, args, describe):
        if family not in opts.families:
            return []
        rows, ref = [], None
        for variant in variants:
            label = describe(variant)
            ms, err, msg, out = timed(f"{family} {label}", make(variant), *args, reference=ref)
            if ref is None and out is not None:
                ref = out  # the first variant is the default configuration
                err = 0.0
            ok = msg is None and (err is None or err <= MISMATCH)
            rows.append({"variant": label, "params": variant, "ms": ms, "err_vs_default": err,
                         "ok": ok, "error": msg})
        tables[family] = rows
        return rows

    log("state scan (forward states): block_k, block_v, warps, stages")
    describe_state = lambda p: f"bk={p[0]} bv={p[1]} w={p[2]} s={p[3]}"  # noqa: E731
    make_state = lambda reverse: lambda p: functools.partial(  # noqa: E731
        state_scan, chunk=64, reverse=reverse, scale=scale if reverse else 1.0, block_k=p[0],
        block_v=p[1], num_warps=p[2], num_stages=p[3], interpret=INTERPRET, name="tune")
    run_family("state_fwd", state_variants, make_state(False), (k, v, g, h0), describe_state)
    log("state scan (backward state gradients)")
    run_family("state_bwd", state_variants[:5], make_state(True), (q, do, g, h0), describe_state)

    describe_chunk = lambda p: f"w={p[0]} s={p[1]} cpp={p[2]} bk={p[3]} bv={p[4]}"  # noqa: E731
    log("output kernel: warps, stages, chunks per program, block_k, block_v")
    span_limit = default.span_limit_for(q.dtype)
    make_out = lambda p, sl=span_limit: functools.partial(  # noqa: E731
        chunk_output, scale=scale, chunk=64, block_k=p[3], block_v=p[4], span_limit=sl,
        chunks_per_program=p[2], num_warps=p[0], num_stages=p[1], interpret=INTERPRET)
    run_family("output", output_variants, make_out, (q, k, v, g, hs), describe_chunk)
    log("gradient kernel: warps, stages, chunks per program, block_k, block_v")
    make_grad = lambda p, sl=span_limit: functools.partial(  # noqa: E731
        chunk_grads, scale=scale, chunk=64, block_k=p[3], block_v=p[4], span_limit=sl,
        chunks_per_program=p[2], num_warps=p[0], num_stages=p[1], interpret=INTERPRET)
    run_family("grads", grad_variants, make_grad, (q, k, v, g, do, hs, dhs), describe_chunk)

    log("intra-chunk paths at the default launch: exact path forced / matmul path only")
    paths = {}
    for family, make, args, p in (
        ("output", make_out, (q, k, v, g, hs), output_variants[0]),
        ("grads", make_grad, (q, k, v, g, do, hs, dhs), grad_variants[0]),
    ):
        if family not in opts.families:
            continue
        for name, sl in (("exact path (span > 60)", -1.0), ("matmul path only", float("inf"))):
            ms, _, msg, _ = timed(f"{family} {name}", make(p, sl), *args)
            paths[f"{family}: {name}"] = ms if msg is None else msg
    results["paths"] = paths

    def best(family, default_params):
        ok = [r for r in tables.get(family, []) if r["ok"] and r["ms"] is not None]
        return min(ok, key=lambda r: r["ms"])["params"] if ok else default_params

    bs_state = best("state_fwd", state_variants[0])
    bs_out = best("output", output_variants[0])
    bs_grad = best("grads", grad_variants[0])
    tuned = dataclasses.replace(
        default, block_k_state=bs_state[0], block_v_state=bs_state[1],
        num_warps_state=bs_state[2], num_stages_state=bs_state[3],
        num_warps_fwd=bs_out[0], num_stages_fwd=bs_out[1], chunks_per_program_fwd=bs_out[2],
        # One K and one V tile for both kernels: the backward's choice (it costs more).
        block_k=bs_grad[3], block_v=bs_grad[4],
        num_warps_bwd=bs_grad[0], num_stages_bwd=bs_grad[1], chunks_per_program_bwd=bs_grad[2])
    results["tuned"] = dataclasses.asdict(tuned)

    log("whole op: default vs tuned vs chunk 32")
    whole = {}
    configs = (("default", default), ("tuned", tuned),
               ("tuned, chunk 32", dataclasses.replace(tuned, chunk=32)))
    for name, bs in configs:
        fwd = lambda q, k, v, g, bs=bs: chunk_gla(q, k, v, g, block_sizes=bs)[0]  # noqa: E731

        def fwd_bwd(q, k, v, g, bs=bs):
            def loss(*a):
                o = chunk_gla(*a, block_sizes=bs)[0]
                return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32))

            return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, g)

        ms_f, err_f, _, _ = timed(f"{name} fwd", fwd, q, k, v, g, reference=(o_x,))
        ms_b, _, _, _ = timed(f"{name} fwd+bwd", fwd_bwd, q, k, v, g)
        whole[name] = {"fwd": ms_f, "fwd+bwd": ms_b, "o_vs_xla": err_f}
    results["whole"] = whole
    results["kernels"] = tables

    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "gla_tune.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)

    print(f"GLA kernel tuning on {results['device']}, B={B} T={T} H={H} K={K} V={V} bf16 "
          "(no anchor runs here: python -m benchmarks.kernels)")
    print(f"default vs xla: o rel err {results['default_vs_xla']:.2e}")
    for family, rows in tables.items():
        print(f"\n{family} (sorted; * the op's default, the reference of the others)")
        for r in sorted(rows, key=lambda r: (r["ms"] is None, r["ms"] or 0)):
            status = "ok" if r["ok"] else ("FAILED" if r["error"] else "MISMATCH")
            err = "" if r["err_vs_default"] is None else f"  err {r['err_vs_default']:.1e}"
            ms = "   -   " if r["ms"] is None else f"{r['ms']:7.3f}"
            mark = "*" if r is rows[0] else " "
            print(f" {mark}{ms} ms  {r['variant']:<32} {status}{err}")
    print("\nintra-chunk paths (default launch):")
    for name, ms in paths.items():
        print(f"  {name:<40} " + (f"{ms:.3f} ms" if isinstance(ms, float) else str(ms)))
    print(f"\ntuned BlockSizes: {tuned}")
    print(f"\n{'whole op':<18}{'fwd ms':>10}{'fwd+bwd ms':>12}{'o vs xla':>10}")
    for name, r in whole.items():
        fmt = lambda x: "failed" if x is None else f"{x:.3f}"  # noqa: E731
        err = "-" if r["o_vs_xla"] is None else f"{r['o_vs_xla']:.1e}"
        print(f"{name:<18}{fmt(r['fwd']):>10}{fmt(r['fwd+bwd']):>12}{err:>10}")


if __name__ == "__main__":
    main()
