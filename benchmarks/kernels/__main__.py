"""Kernel benchmarks: jaxla's ops beside their anchors, measured in one run on one GPU.

    python -m benchmarks.kernels --op gla simple_gla lightning selective_scan
        [--shape anchor ...] [--packing dense packed] [--variant jaxla jla fla mamba_ssm ...]
        [--modes fwd fwd+bwd] [--out DIR]

Cases come from `registry.py` (op x shape x dense/packed). For each case every variant gets the
same inputs and is timed the same way: JAX variants as the mean of `--calls` back-to-back calls
with one sync at the end (what `do_bench` does for PyTorch; the synchronised median is kept
beside it in the JSON), PyTorch variants (FLA, mamba_ssm) with `triton.testing.do_bench`
(median) on torch copies of the inputs, moved to the variant's own layout before the timing and
back after it (mamba_ssm's time-last layout). A variant that cannot run a case (its package does
not import, it has no packed kernel) says why in its row. "fwd" times the output; "fwd+bwd" the
gradient of `sum(out * do)` for a fixed random `do`, w.r.t. every input the op differentiates.
`error` is the RMS relative error of each variant's output (fwd) or largest over its gradients
(fwd+bwd) against the first variant that ran (jaxla). `floor` is the time to read every input
once and write every output once at `--bandwidth` bytes/s (`--bandwidth` is a number measured on
the machine, passed by whoever runs this; none is stored here).
The table printed last gives, per case, every variant's time and its ratio to jaxla's
(> 1: jaxla is faster). Results go to `<out>/kernels.json`, written after every case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

# Share the GPU with PyTorch: allocate on demand (only if no JAX backend exists yet).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxla  # noqa: E402
import pallas_kernels  # noqa: E402
from benchmarks.kernels import registry  # noqa: E402
from benchmarks.kernels.registry import DIFF_ARGS, OPS  # noqa: E402
from benchmarks.timing import time_jax, time_jax_pipelined, time_torch  # noqa: E402
from jaxla.testing import rel_error  # noqa: E402

MODES = ("fwd", "fwd+bwd")


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def _jax_timed(fn, args, do, mode, calls):
    if mode == "fwd":
        run = jax.jit(fn)
    else:
        def loss(*a):
            return jnp.sum(fn(*a).astype(jnp.float32) * do.astype(jnp.float32))

        run = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
    out = jax.block_until_ready(run(*args))
    return out, time_jax_pipelined(run, *args, calls=calls), time_jax(run, *args)


def _torch_timed(fn, args, do, mode, layout=None):
    """Times `fn` on torch copies of `args` in its own layout (`layout`, see `Variant`)."""
    import torch

    layout = layout or (lambda t: t)

    def to_torch(x):
        t = torch.from_numpy(np.asarray(jnp.asarray(x, jnp.float32))).cuda()
        return layout(t.to(torch.bfloat16) if x.dtype == jnp.bfloat16 else t)

    tensors = [to_torch(x) for x in args]
    tdo = to_torch(do)
    if mode == "fwd":
        out = fn(*tensors)
        run = lambda: fn(*tensors)  # noqa: E731
        outs = [out]
    else:
        leaves = [t.detach().clone().requires_grad_() for t in tensors]

        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(tdo)

        run()
        outs = [t.grad for t in leaves]
    ms = time_torch(run)
    outs = [jnp.asarray(layout(o.detach()).float().cpu().numpy()) for o in outs]
    torch.cuda.empty_cache()
    return (outs[0] if mode == "fwd" else tuple(outs)), ms, None


def run_case(op: str, shape, packed: bool, variants, modes, calls, bandwidth, seed=0):
    bench = OPS[op]
    x = bench.make(shape.dims, packed, seed)
    args = [x[n] for n in DIFF_ARGS[op]]
    out = None
    for variant in bench.variants:  # the output's shape, from the first JAX variant that traces
        if variant.torch:
            continue
        built = variant.build(x, packed)
        if isinstance(built, str):
            continue
        try:
            out = jax.eval_shape(built, *args)
            break
        except Exception:  # noqa: BLE001 - its own row says why
            continue
    if out is None:
        return [dict(op=op, shape=shape.label(), packed=registry.DOCUMENTS_PER_ROW if packed else 0,
                     variant="all", mode=m, ms=None,
                     note="no variant traces this case") for m in modes]
    do = jax.random.normal(jax.random.key(seed + 1), out.shape, jnp.bfloat16)
    rows, reference = [], {}
    for variant in bench.variants:
        if variants and variant.name not in variants:
            continue
        built = variant.build(x, packed)
        for mode in modes:
            row = dict(op=op, shape=shape.label(), variant=variant.name, mode=mode,
                       packed=registry.DOCUMENTS_PER_ROW if packed else 0)
            if bandwidth:
                row["floor_ms"] = 1e3 * bench.bytes_moved(shape.dims, mode) / bandwidth
            if isinstance(built, str):
                rows.append(dict(row, ms=None, note=built))
                continue
            started = time.perf_counter()
            try:
                if variant.torch:
                    out, ms, ms_sync = _torch_timed(built, args, do, mode, variant.torch_layout)
                else:
                    out, ms, ms_sync = _jax_timed(built, args, do, mode, calls)
                row.update(ms=ms, ms_sync=ms_sync)
                outs = (out,) if mode == "fwd" else tuple(out)
                if mode in reference:
                    row["error"] = max(rel_error(a, b)
                                       for a, b in zip(outs, reference[mode], strict=True))
                else:
                    reference[mode] = outs
            except Exception as e:  # noqa: BLE001
                row.update(ms=None, note=_message(e))
                print(traceback.format_exc(), file=sys.stderr)
            row["seconds"] = round(time.perf_counter() - started, 1)
            print(f"[{op} {shape.name} {'packed' if packed else 'dense'}] {variant.name} {mode}: "
                  + (f"{row['ms']:.3f} ms" if row.get("ms") else row.get("note", "")),
                  file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def table(rows) -> str:
    lines = []
    cases = list(dict.fromkeys((r["op"], r["shape"], r["packed"]) for r in rows))
    for op, shape, packed in cases:
        sub = [r for r in rows if (r["op"], r["shape"], r["packed"]) == (op, shape, packed)]
        lines.append(f"{op} {shape} {f'packed, {packed} documents/row' if packed else 'dense'}")
        base = {r["mode"]: r.get("ms") for r in sub if r["variant"] == sub[0]["variant"]}
        for name in dict.fromkeys(r["variant"] for r in sub):
            cells = []
            for r in (r for r in sub if r["variant"] == name):
                if r.get("ms") is None:
                    cells.append(f"{r['mode']}: - ({r.get('note', '')[:60]})")
                    continue
                ratio = (f" x{r['ms'] / base[r['mode']]:.2f}"
                         if base.get(r["mode"]) and name != sub[0]["variant"] else "")
                err = f" err {r['error']:.1e}" if "error" in r else ""
                floor = f" floor {r['floor_ms']:.3f}" if "floor_ms" in r else ""
                cells.append(f"{r['mode']}: {r['ms']:.3f} ms{ratio}{err}{floor}")
            lines.append(f"  {name:14s} " + " | ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", nargs="+", choices=list(OPS), default=list(OPS))
    parser.add_argument("--shape", nargs="+", help="shape names (default: every shape of the op)")
    parser.add_argument("--packing", nargs="+", choices=("dense", "packed"),
                        default=["dense", "packed"])
    parser.add_argument("--variant", nargs="+", help="variant names (default: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--calls", type=int, default=30, help="back-to-back calls per timing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and cotangents")
    parser.add_argument("--bandwidth", type=float, help="measured bytes/s for the floor column")
    parser.add_argument("--label", default="", help="a label stored with the results")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"argument --calls: must be >= 1, got {args.calls}")
    for option, given, known in (
            ("--shape", args.shape, {s.name for op in args.op for s in OPS[op].shapes}),
            ("--variant", args.variant, {v.name for op in args.op for v in OPS[op].variants})):
        unknown = sorted(set(given or ()) - known)
        if unknown:
            parser.error(f"argument {option}: {unknown} not among the ops' {sorted(known)}")

    device = jax.devices()[0]
    meta = {"device": getattr(device, "device_kind", str(device)), "jax": jax.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "argv": sys.argv, "label": args.label,
            # Where the code under test came from: a "before" run must show an older checkout's.
            "jaxla": str(Path(jaxla.__file__).parent),
            "pallas_kernels": str(Path(pallas_kernels.__file__).parent)}
    print(f"jaxla from {meta['jaxla']}, pallas_kernels from {meta['pallas_kernels']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for op in args.op:
        for shape in OPS[op].shapes:
            if args.shape and shape.name not in args.shape:
                continue
            for packing in args.packing:
                rows += run_case(op, shape, packing == "packed", args.variant, args.modes,
                                 args.calls, args.bandwidth, args.seed)
                name = f"kernels{'-' + args.label if args.label else ''}.json"
                (args.out / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"{meta['device']}, jax {meta['jax']}, {meta['date']} {args.label}")
    print(table(rows))


if __name__ == "__main__":
    main()
