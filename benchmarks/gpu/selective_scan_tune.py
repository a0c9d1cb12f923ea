"""Tune the selective scan kernels' launch configuration on the GPU (a tuning tool: the speed
of jaxla beside its anchors is `python -m benchmarks.kernels`, which runs them; this runs none).

    python -m benchmarks.gpu.selective_scan_tune [--shape mamba-370m] [--dims T=2048 ...]

Times `BlockSizes` variants of the time-parallel kernels (forward: channel block / warps, time
chunk, unroll, prefetch; backward: time chunk, checkpoint interval, sub-chunk, channel block /
warps) on the dense inputs of a registered selective-scan shape (`benchmarks/kernels/registry.py`:
a Mamba-370M layer, bf16, z, D, delta_bias, softplus; `--dims` overrides some of its dims),
checks each against jaxla's xla path (largest relative error of the output and the eight
gradients of `sum(out)`), and prints a table sorted by fwd+bwd time. Forward and backward
parameters are independent: "bwd ms" = fwd+bwd - fwd (forward with saved states), so the best
forward and the best backward settings can be combined. "one-chunk" runs both directions as one
chunk (no time parallelism). Stops starting new variants after `--budget` seconds (compiles
dominate). Writes `selective_scan_tune.json` under $OUT when set.

`--forward-only` times instead the forward as training runs it (with the saved states) for the
`FWD_VARIANTS` (forward fields only, so each compiles in seconds), checks its output against the
xla path, then runs the full fwd+bwd of the default and of the default with the fastest
forward's fields (when that forward is over 2% faster), side by side (`--no-confirm`: not those).
Forward rows carry `back to back` times too (`timing.time_jax_pipelined`).

Options: --shape NAME --dims T=4096 --budget 240 --only name1 name2 ... --forward-only
[--no-confirm]
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

from benchmarks.kernels import registry
from benchmarks.timing import jax_peak_bytes, time_jax, time_jax_pipelined
from jaxla import ops
from jaxla.testing import rel_error
from pallas_kernels._common import default_interpret
from pallas_kernels.selective_scan import BlockSizes, selective_scan
from pallas_kernels.selective_scan.api import _forward, _Static
from pallas_kernels.selective_scan.fwd import Flags

OP = "selective_scan"
ARGS = registry.DIFF_ARGS[OP]  # u, delta, A, B, C, D, z, delta_bias

# Variants are BlockSizes fields over the op's defaults at the tuned shape (`block_sizes`).
# Most informative first: the budget may cut the tail.
VARIANTS = {
    "default": {},
    "one-chunk": dict(chunk=1 << 20, chunk_bwd=1 << 20),  # no time parallelism
    "s4-c4": dict(sub=4, checkpoint=4),  # fewer live states, twice the checkpoints
    "s4-c16": dict(sub=4, checkpoint=16),  # sub-chunk buffer, a quarter of the checkpoints
    "s2-c8": dict(sub=2, checkpoint=8),
    "fc64-cb256": dict(chunk=64, chunk_bwd=256),  # the defaults without a shape
    "cb128": dict(chunk_bwd=128),  # more backward programs
    "fc256-cb1024": dict(chunk=256, chunk_bwd=1024),  # fewer programs, less chunk walking
    "fw1": dict(num_warps=1, block_d=128),
    "fw4": dict(num_warps=4, block_d=512),
    "u2-pf": dict(unroll=2, prefetch=True),
    "u8": dict(unroll=8),
    "bw2": dict(num_warps_bwd=2, block_d_bwd=64),
    "fstages2": dict(num_stages=2, num_stages_bwd=2),
}
# Forward-only variants (`--forward-only`): the backward's fields stay at their defaults.
FWD_VARIANTS = {  # most informative first: the budget may cut the tail
    "default": {},
    "carry32": dict(block_d_carry=32),  # the carry walk on 8x more, narrower programs
    "fc64": dict(chunk=64),
    "fc128": dict(chunk=128),
    "fc512": dict(chunk=512),
    "fc32": dict(chunk=32),
    "fw1": dict(num_warps=1, block_d=128),
    "u8": dict(unroll=8),
    "u4-pf": dict(prefetch=True),
    # one pass over all T, no chunk states: one channel x N per thread, many small programs
    "oc-bd32-pf": dict(chunk=1 << 20, num_warps=1, block_d=32, prefetch=True),
    "u2": dict(unroll=2),
    "fw4": dict(num_warps=4, block_d=512),
    "carry64": dict(block_d_carry=64),
    "fstages2": dict(num_stages=2),
    "oc-bd64-pf": dict(chunk=1 << 20, num_warps=2, block_d=64, prefetch=True),
}


FWD_FIELDS = ("block_d", "chunk", "unroll", "prefetch", "num_warps", "num_stages",
              "block_d_carry")


def block_sizes(dims: dict, fields: dict) -> BlockSizes:
    """The op's blocks for this shape (`get_default`, then `for_call`), `fields` over them."""
    call = dict(state_size=dims["N"], batch=dims["B"], seq_len=dims["T"], channels=dims["D"])
    return BlockSizes.get_default(**call, **fields).for_call(**call)


def xla_op(u, delta, A, B, C, D, z, delta_bias):
    """jaxla's chunked pure-JAX path: the reference every variant is checked against."""
    return ops.selective_scan(u, delta, A, B, C, D, z, delta_bias=delta_bias,
                              delta_softplus=True, implementation="xla")[0]


def kernel_op(bs: BlockSizes):
    """The Pallas kernels on `bs`, called directly (no op checks)."""
    def fn(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias=delta_bias,
                              delta_softplus=True, block_sizes=bs)[0]
    return fn


def grads_of_sum(fn):
    """The gradient of `sum(fn(...))` with respect to all eight inputs."""
    def loss(*args):
        return jnp.sum(fn(*args).astype(jnp.float32))
    return jax.grad(loss, argnums=tuple(range(len(ARGS))))


def run_variant(name, bs, args, ref):
    start = time.perf_counter()
    fwd, fwd_bwd = jax.jit(kernel_op(bs)), jax.jit(grads_of_sum(kernel_op(bs)))
    got = [fwd(*args)] + list(fwd_bwd(*args))  # compiles both
    compile_s = time.perf_counter() - start
    error = max(rel_error(a, b) for a, b in zip(got, ref, strict=True))
    fwd_ms = time_jax(fwd, *args)
    total_ms = time_jax(fwd_bwd, *args)
    peak = jax_peak_bytes(grads_of_sum(kernel_op(bs)), *args)
    return {"name": name, "fwd_ms": fwd_ms, "fwd_bwd_ms": total_ms, "bwd_ms": total_ms - fwd_ms,
            "fwd_pipe_ms": time_jax_pipelined(fwd, *args),
            "fwd_bwd_pipe_ms": time_jax_pipelined(fwd_bwd, *args),
            "error": error, "ok": error < 2e-2, "compile_s": compile_s,
            "peak_gib": None if peak is None else peak / 2**30,
            "block_sizes": dataclasses.asdict(bs)}


def _fwd_save_fn(bs):
    """The forward as the custom VJP runs it for training: output and saved states."""
    static = _Static(Flags(has_D=True, has_z=True, has_bias=True, has_h0=False, softplus=True),
                     bs, default_interpret())

    def fn(u, delta, A, Bm, Cm, D, z, bias):
        out, _, states = _forward(static, u, delta, A, Bm[:, :, None], Cm[:, :, None], D, z,
                                  bias, None, None, None, save=True)
        return out, states
    return fn


def forward_only(names, dims, args, ref_out, budget):
    rows, start = [], time.perf_counter()
    for name in names:
        if time.perf_counter() - start > budget:
            print(f"{name}: skipped (budget)", flush=True)
            continue
        try:
            t0 = time.perf_counter()
            bs = block_sizes(dims, FWD_VARIANTS[name])
            fn = jax.jit(_fwd_save_fn(bs))
            out, _ = jax.block_until_ready(fn(*args))
            compile_s = time.perf_counter() - t0
            row = {"name": name, "fwd_save_ms": time_jax(fn, *args),
                   "fwd_save_pipe_ms": time_jax_pipelined(fn, *args),
                   "error": rel_error(out, ref_out), "compile_s": compile_s}
            row["ok"] = row["error"] < 2e-2
            print(f"{name}: fwd (saving states) {row['fwd_save_ms']:.3f} ms (back to back "
                  f"{row['fwd_save_pipe_ms']:.3f}), error "
                  f"{row['error']:.2e}, compile {compile_s:.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - a variant that fails to compile or run
            traceback.print_exc()
            row = {"name": name, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"{name}: FAILED {row['failed']}", flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mamba-370m",
                        choices=[s.name for s in registry.OPS[OP].shapes],
                        help="a registered selective-scan shape (benchmarks/kernels/registry.py)")
    parser.add_argument("--dims", nargs="+", type=registry.dims_item, default=[],
                        metavar="NAME=INT", help="override dims of the shape, e.g. T=2048")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all variants")
    parser.add_argument("--only", nargs="+", help="variants to run")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=True,
                        help="with --forward-only: then run the full fwd+bwd of the default "
                        "and of the best forward")
    args_ns = parser.parse_args(argv)
    table = FWD_VARIANTS if args_ns.forward_only else VARIANTS
    unknown = sorted(set(args_ns.only or ()) - set(table))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(table)}")
    try:
        dims, x = registry.case_inputs(OP, args_ns.shape, dims=args_ns.dims)
    except ValueError as e:
        parser.error(f"argument --dims: {e}")
    label = " ".join(f"{k}={v}" for k, v in dims.items())
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {label}", flush=True)

    args = [x[name] for name in ARGS]
    t0 = time.perf_counter()
    if args_ns.forward_only and not args_ns.confirm:  # the output is all that is checked
        ref = [jax.jit(xla_op)(*args)]
    else:
        xla_fwd, xla_grads = jax.jit(xla_op), jax.jit(grads_of_sum(xla_op))
        ref = [xla_fwd(*args)] + list(xla_grads(*args))
        xla_ms = (time_jax(xla_fwd, *args, iters=10), time_jax(xla_grads, *args, iters=10))
        print(f"xla path: fwd {xla_ms[0]:.3f} ms, fwd+bwd {xla_ms[1]:.3f} ms "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)

    if args_ns.forward_only:
        fwd_rows = forward_only(args_ns.only or list(FWD_VARIANTS), dims, args, ref[0],
                                args_ns.budget)
        key = "fwd_save_pipe_ms"
        ok = sorted((r for r in fwd_rows if r.get("ok")), key=lambda r: r[key])
        default = next((r for r in ok if r["name"] == "default"), None)
        default_bs = block_sizes(dims, VARIANTS["default"])
        to_run = {"default": default_bs} if args_ns.confirm else {}
        if args_ns.confirm and ok and default and ok[0][key] < 0.98 * default[key]:
            best = block_sizes(dims, FWD_VARIANTS[ok[0]["name"]])
            to_run["default+" + ok[0]["name"]] = dataclasses.replace(
                default_bs, **{f: getattr(best, f) for f in FWD_FIELDS})
        full = [run_variant(name, bs, args, ref) for name, bs in to_run.items()]
        lines = [f"forward (saving states), {label} bf16 on {jax.devices()[0].device_kind}"]
        lines += [f"  {r['name']:<14}{r['fwd_save_ms']:8.3f} ms, back to back {r[key]:.3f} ms, "
                  f"error {r['error']:.1e}" for r in ok]
        lines += [f"  {r['name']:<14}FAILED {r['failed']}" for r in fwd_rows if "failed" in r]
        lines += [f"full: {r['name']}: fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms; "
                  f"back to back {r['fwd_pipe_ms']:.3f} / {r['fwd_bwd_pipe_ms']:.3f} ms; "
                  f"error {r['error']:.2e}" for r in full]
        print("\n".join(lines))
        out = os.environ.get("OUT")
        if out:
            Path(out, "selective_scan_fwd_tune.json").write_text(json.dumps(
                {"dims": dims, "forward": fwd_rows, "full": full}, indent=1))
        return

    results, skipped = [], []
    start = time.perf_counter()
    for name in args_ns.only or VARIANTS:
        if time.perf_counter() - start > args_ns.budget:
            skipped.append(name)
            continue
        try:
            r = run_variant(name, block_sizes(dims, VARIANTS[name]), args, ref)
        except Exception as e:  # noqa: BLE001 - a variant that fails to compile or run
            traceback.print_exc()
            r = {"name": name, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
                 "fields": VARIANTS[name]}
        results.append(r)
        if "failed" in r:
            print(f"{name}: FAILED {r['failed']}", flush=True)
        else:
            print(f"{name}: fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms, "
                  f"error {r['error']:.2e}, compile {r['compile_s']:.0f}s", flush=True)

    good = sorted((r for r in results if "failed" not in r), key=lambda r: r["fwd_bwd_ms"])
    lines = [f"selective_scan tuning, {label} bf16 on {jax.devices()[0].device_kind}; xla path "
             f"fwd {xla_ms[0]:.3f} / fwd+bwd {xla_ms[1]:.3f} ms (no anchor runs here: "
             "python -m benchmarks.kernels)",
             f"{'variant':<14}{'fwd ms':>9}{'bwd ms':>9}{'f+b ms':>9}"
             f"{'vs xla':>8}{'error':>10}{'GiB':>7}  ok"]
    for r in good:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(f"{r['name']:<14}{r['fwd_ms']:9.3f}{r['bwd_ms']:9.3f}{r['fwd_bwd_ms']:9.3f}"
                     f"{xla_ms[1] / r['fwd_bwd_ms']:7.1f}x{r['error']:10.2e}{peak:>7}"
                     f"  {'yes' if r['ok'] else 'NO'}")
    for r in results:
        if "failed" in r:
            lines.append(f"{r['name']:<14} FAILED: {r['failed']}")
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
        path.write_text(json.dumps({"dims": dims, "xla_ms": xla_ms, "results": results,
                                    "skipped": skipped, "table": table}, indent=1))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
