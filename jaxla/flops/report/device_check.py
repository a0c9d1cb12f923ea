"""`python -m jaxla.flops.report.device_check [--out DIR]`: what XLA's cost analysis and
`peak_flops` say on this device.

For the GPU machine (one short run): the device kind string the training program's MFU will look
up, the peak it maps to, and what `Lowered/Compiled.cost_analysis()` return there for a cuBLAS
matmul and for jaxla's chunked GLA (XLA path), against the formulas. Prints a table last; with
`--out DIR` (e.g. `--out "$OUT"` on the GPU machines) also writes `DIR/flops_device.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

from jaxla import ops
from jaxla.flops import formulas as F
from jaxla.flops.hardware import peak_flops
from jaxla.flops.report.walker import count_all


def _row(name, formula, fn, *args):
    t0 = time.time()
    try:
        counts = count_all(fn, *args)
        lo, co = counts["lowered"], counts["compiled"]
        out = dict(case=name, formula=formula, lowered=lo.flops, compiled=co.flops,
                   raw_compiled=co.raw.flops, custom_calls=co.custom_calls,
                   warnings=list(co.warnings) + [w for w in lo.warnings if w not in co.warnings],
                   error=None)
    except Exception as e:  # noqa: BLE001 - report and keep going
        out = dict(case=name, formula=formula, lowered=None, compiled=None, raw_compiled=None,
                   custom_calls=None, warnings=[], error=f"{type(e).__name__}: {e}"[:300])
    out["seconds"] = round(time.time() - t0, 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxla.flops.report.device_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for flops_device.json (default: print only)")
    args = parser.parse_args(argv)
    dev = jax.devices()[0]
    kind = dev.device_kind
    info = {
        "platform": dev.platform, "device_kind": kind, "jax": jax.__version__,
        "peak_bf16": peak_flops(kind, "bfloat16"), "peak_fp32_tf32": peak_flops(kind, "float32"),
        "peak_fp32": peak_flops(kind, "float32", tf32=False),
    }
    S = jax.ShapeDtypeStruct
    n = 4096
    B, T, H, K, V = 4, 2048, 16, 128, 128
    q, v = S((B, T, H, K), jnp.bfloat16), S((B, T, H, V), jnp.bfloat16)
    g = S((B, T, H, K), jnp.float32)
    rows = [
        _row("matmul 4096^3 bf16", F.matmul(n, n, n).total, jnp.matmul,
             S((n, n), jnp.bfloat16), S((n, n), jnp.bfloat16)),
        _row(f"gla xla path B{B} T{T} H{H} K{K} V{V} bf16",
             F.gla_chunked(B, T, H, K, V, algorithm="xla").total,
             lambda q, k, v, g: ops.gla(q, k, v, g, implementation="xla")[0], q, q, v, g),
    ]
    result = {"device": info, "rows": rows}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "flops_device.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)
    print(json.dumps(info, default=str))
    for r in rows:
        for w in r["warnings"]:
            print(f"  [{r['case']}] {w}")
        if r["error"]:
            print(f"  [{r['case']}] ERROR {r['error']}")
    print(f"\n{'case':44s} {'formula':>12s} {'lowered':>12s} {'compiled':>12s} {'co/formula':>10s}"
          f" {'custom calls':>12s}")
    fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
    for r in rows:
        ratio = (r["compiled"] / r["formula"]) if r["compiled"] else float("nan")
        print(f"{r['case']:44s} {r['formula']:12.4g} {fmt(r['lowered']):>12s} "
              f"{fmt(r['compiled']):>12s} {ratio:10.4f} {str(r['custom_calls']):>12s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
