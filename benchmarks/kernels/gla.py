"""GLA kernel benchmark: `python -m benchmarks.kernels --op gla [--T ...] [--out DIR]`.

The anchors' inputs (shared anchors.md): B=4, H=16, K=V=128, bf16 q, k, v ~ randn, log-decays
g = logsigmoid(randn) / 16 in float32, the same arrays for every implementation at a given T.
Rows: "pallas" (jaxla's kernels), "xla" (jaxla's chunked pure-JAX path), "fla chunk_gla" (PyTorch +
Triton, if `fla` imports) and "cudnn flash (causal)" (`jax.nn.dot_product_attention` on the same
q, k, v as `[B, T, H, 128]` bf16). Modes: "fwd", and "fwd+bwd" = forward plus the backward of
`sum(o * do)` with a fixed random bf16 cotangent `do` (gradients for q, k, v and g).

`floor_ms` (GLA rows) is the larger of the memory floor at 3.0 TB/s and the matmul floor at
470 TFLOP/s (benchmarks/timing.py). Bytes with N = B*T*H*128: forward reads q, k, v (bf16) and g
(fp32) and writes o (bf16): 12N; the backward reads q, k, v, g, do and writes dq, dk, dv (bf16)
and dg (fp32): 22N; fwd+bwd counts both passes: 34N. FLOPs: 2TCK + 2TCV + 4TKV per head forward
(C = 64), three times that for fwd+bwd. `error` is the largest RMS relative error of the output
(fwd) or of dq, dk, dv, dg (fwd+bwd) against the xla path in float32, when that ran; a message
when the row failed (out of memory, missing package).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

# Share the GPU with PyTorch: allocate on demand instead of taking 75% of it up front. Takes
# effect only if no JAX backend exists yet (the runner imports this module before any JAX work).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timing import floor_ms, report_row, time_jax, time_torch, torch_peak_bytes  # noqa: E402
from jaxla import ops  # noqa: E402
from jaxla.testing import rel_error  # noqa: E402

DEFAULT_T = (1024, 2048, 4096, 8192, 16384)
B, H, D = 4, 16, 128
CHUNK = 64
GIB = 2.0**30


def _floor(T: int, mode: str) -> float:
    N = B * T * H * D
    flops = B * H * (2 * T * CHUNK * D + 2 * T * CHUNK * D + 4 * T * D * D)
    if mode == "fwd":
        return floor_ms(12 * N, flops)
    return floor_ms(34 * N, 3 * flops)


def _inputs(T: int):
    kq, kk, kv, kg, kd = jax.random.split(jax.random.key(T), 5)
    shape = (B, T, H, D)
    q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in (kq, kk, kv, kd))
    g = jax.nn.log_sigmoid(jax.random.normal(kg, shape, jnp.float32)) / 16
    return q, k, v, g, do


def _peak_bytes(compiled):
    """Arguments + outputs + temporaries of a compiled program (as timing.jax_peak_bytes)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(total - getattr(m, "alias_size_in_bytes", 0))


def _gla(implementation):
    return lambda q, k, v, g: ops.gla(q, k, v, g, implementation=implementation)[0]


def _cudnn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def _jax_row(name, fn, args, do, mode, reference, gla=True):
    """Time `fn` (fwd) or its gradient (fwd+bwd) on `args`; `reference` holds the xla results."""
    n_grad = len(args)
    started = time.perf_counter()
    if mode == "fwd":
        run = jax.jit(fn)
    else:
        def loss(*a):
            return jnp.sum(fn(*a).astype(jnp.float32) * do.astype(jnp.float32))

        run = jax.jit(jax.grad(loss, argnums=tuple(range(n_grad))))
    compiled = run.lower(*args).compile()  # one compile serves the timing and the memory numbers
    out = jax.block_until_ready(compiled(*args))
    row = {"impl": name, "mode": mode, "ms": time_jax(compiled, *args)}
    peak = _peak_bytes(compiled)
    row["peak_gib"] = None if peak is None else peak / GIB
    if gla:
        row["floor_ms"] = _floor(args[0].shape[1], mode)
    if reference is not None and gla:
        outs = (out,) if mode == "fwd" else out
        row["error"] = max(rel_error(a, b) for a, b in zip(outs, reference, strict=True))
    return report_row("gla", args[0].shape[1], row, started), out


def _fla_rows(args, do, modes, reference):
    try:
        import torch
        from fla.ops.gla import chunk_gla
    except Exception as e:  # noqa: BLE001
        return [{"impl": "fla chunk_gla", "mode": m, "ms": None, "error": f"FLA unavailable: {e!r}"}
                for m in modes]
    to_torch = lambda x, dt: torch.from_numpy(np.asarray(x, np.float32)).cuda().to(dt)  # noqa: E731
    q, k, v, g = (to_torch(x, torch.float32 if x.dtype == jnp.float32 else torch.bfloat16)
                  for x in args)
    tdo = to_torch(do, torch.bfloat16)
    T = q.shape[1]
    rows = []
    for mode in modes:
        started = time.perf_counter()
        try:
            if mode == "fwd":
                def fn():  # the inputs do not require grad: no autograd graph is built
                    return chunk_gla(q, k, v, g)[0]

                out = [fn()]
            else:
                leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g)]

                def fn():
                    for x in leaves:
                        x.grad = None
                    chunk_gla(*leaves)[0].backward(tdo)

                fn()
                out = [x.grad for x in leaves]
            row = {"impl": "fla chunk_gla", "mode": mode, "ms": time_torch(fn),
                   "peak_gib": torch_peak_bytes(fn) / GIB, "floor_ms": _floor(T, mode)}
            if reference is not None:
                ref = reference[mode]
                if ref is not None:
                    mine = [jnp.asarray(x.detach().float().cpu().numpy()) for x in out]
                    row["error"] = max(rel_error(a, b) for a, b in zip(mine, ref, strict=True))
            rows.append(report_row("gla", T, row, started))
        except Exception as e:  # noqa: BLE001
            rows.append({"impl": "fla chunk_gla", "mode": mode, "ms": None, "error": _message(e)})
        finally:
            torch.cuda.empty_cache()
    return rows


def _message(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text[:300]


def rows(T: int, modes) -> list[dict]:
    args_all = _inputs(T)
    args, do = args_all[:4], args_all[4]
    out_rows = []
    reference = {}
    for mode in modes:  # the xla path first: it is the reference for the others
        try:
            row, out = _jax_row("xla", _gla("xla"), args, do, mode, None)
            reference[mode] = (out,) if mode == "fwd" else out
            row["error"] = 0.0
            out_rows.append(row)
        except Exception as e:  # noqa: BLE001
            reference[mode] = None
            out_rows.append({"impl": "xla", "mode": mode, "ms": None, "error": _message(e)})
            print(f"[gla] xla {mode} T={T} failed: {_message(e)}", file=sys.stderr)
    for name, fn, gla in (("pallas", _gla("pallas"), True),
                          ("cudnn flash (causal)", _cudnn, False)):
        for mode in modes:
            try:
                row, _ = _jax_row(name, fn, args if gla else args[:3], do, mode,
                                  reference.get(mode), gla=gla)
                out_rows.append(row)
            except Exception as e:  # noqa: BLE001
                out_rows.append({"impl": name, "mode": mode, "ms": None, "error": _message(e)})
                print(f"[gla] {name} {mode} T={T} failed:\n{traceback.format_exc()}",
                      file=sys.stderr)
    out_rows += _fla_rows(args, do, modes, reference)
    for r in out_rows:
        print(f"[gla] T={T} {r['impl']:>22} {r['mode']:>8}: "
              + (f"{r['ms']:.3f} ms" if r.get("ms") is not None else f"failed ({r.get('error')})"),
              file=sys.stderr, flush=True)
    return out_rows
