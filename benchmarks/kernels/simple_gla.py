"""Lightning Attention / simple GLA kernels: `python -m benchmarks.kernels --op simple_gla`.

Shapes as the GLA benchmark: B=4, H=16, K=V=128, bf16 q, k, v ~ randn, T in DEFAULT_T; the same
arrays for every implementation at a given T. The decay is FLA's lightning convention at
layer_idx=0, num_layers=12 (FLA's own benchmark setting): g_gamma[h] = -(8/H) h, scale K^-0.5.
Rows: "pallas" (jaxla's kernels, `ops.lightning_attention(decay="fla")`), "xla" (jaxla's chunked
pure-JAX path), "fla chunk_lightning_attn" (PyTorch + Triton, when `fla` imports) and
"cudnn flash (causal)" (`jax.nn.dot_product_attention(..., implementation="cudnn")` on the same
q, k, v). At T=4096 two more rows time the data-dependent gate (g = logsigmoid(randn)/16 [B, T, H]
float32, with its gradient): "pallas (g)" and "fla chunk_simple_gla (g)".
Modes: "fwd"; "fwd+bwd" = forward plus the backward of sum(o * do) for a fixed random bf16 `do`
(gradients of q, k, v, and g in the gated rows).

`floor_ms`: the larger of the memory floor at 3.0 TB/s and the matmul floor at 470 TFLOP/s
(benchmarks/timing.py). With N = B*T*H*128 elements: the forward reads q, k, v and writes o, all
bf16 (8N bytes); the backward reads q, k, v, do and writes dq, dk, dv (14N); fwd+bwd = 22N.
FLOPs per head (chunk 64): 2TCK + 2TCV + 4TKV forward, 3x that for fwd+bwd. The memory term
dominates (T=4096: 0.09 ms fwd, 0.25 ms fwd+bwd). `error`: RMS relative error of o (fwd) or the
largest of dq, dk, dv (dg) (fwd+bwd) against the xla path; a message when a row failed.
`ms` comes from `time_jax` (each call synchronised, as every JAX row in this project);
`ms_pipelined` (JAX rows) is the mean of 50 calls issued back to back, closer to the CUDA-event
timing of `triton.testing.do_bench` that the FLA rows use.
"""

from __future__ import annotations

import os
import sys
import time

# Let PyTorch share the GPU: JAX allocates on demand (effective before any JAX backend exists).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timing import (  # noqa: E402
    floor_ms,
    report_row,
    time_jax,
    time_torch,
    torch_peak_bytes,
)
from jaxla import ops  # noqa: E402
from jaxla.testing import rel_error  # noqa: E402

DEFAULT_T = (1024, 2048, 4096, 8192, 16384)
GATED_T = (4096,)
B, H, D = 4, 16, 128
LAYER_IDX, NUM_LAYERS = 0, 12
CHUNK = 64
GIB = 2.0**30


def floor(T: int, mode: str) -> float:
    N = B * T * H * D
    flops = B * H * (4 * T * CHUNK * D + 4 * T * D * D)
    return floor_ms(8 * N, flops) if mode == "fwd" else floor_ms(22 * N, 3 * flops)


def make_inputs(T: int):
    keys = jax.random.split(jax.random.key(T), 5)
    q, k, v, do = (jax.random.normal(key, (B, T, H, D), jnp.bfloat16) for key in keys[:4])
    g = jax.nn.log_sigmoid(jax.random.normal(keys[4], (B, T, H), jnp.float32)) / 16
    return q, k, v, g, do


def lightning(implementation):
    def fn(q, k, v):
        return ops.lightning_attention(q, k, v, layer_idx=LAYER_IDX, num_layers=NUM_LAYERS,
                                       decay="fla", implementation=implementation)[0]

    return fn


def gated(implementation):
    def fn(q, k, v, g):
        return ops.simple_gla(q, k, v, g, implementation=implementation)[0]

    return fn


def cudnn(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def jitted(fn, n_args, do, mode):
    """The jitted forward, or the jitted gradient of sum(fn(...) * do) w.r.t. all arguments."""
    if mode == "fwd":
        return jax.jit(fn)

    def loss(*args):
        return jnp.sum(fn(*args).astype(jnp.float32) * do.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=tuple(range(n_args))))


def time_pipelined(run, *args, calls: int = 50) -> float:
    """Mean ms of `calls` back-to-back calls (one sync at the end)."""
    jax.block_until_ready(run(*args))
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = run(*args)
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / calls


def message(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def peak_bytes(compiled) -> int | None:
    """`benchmarks.timing.jax_peak_bytes` for an executable compiled already (one compile per
    row instead of two): arguments + outputs + temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends have no memory analysis
        return None
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return int(total - getattr(m, "alias_size_in_bytes", 0))


def jax_row(name, fn, args, do, mode, reference, with_floor=True):
    started = time.perf_counter()
    run = jitted(fn, len(args), do, mode).lower(*args).compile()
    out = jax.block_until_ready(run(*args))
    row = {"impl": name, "mode": mode, "ms": time_jax(run, *args),
           "ms_pipelined": time_pipelined(run, *args)}
    peak = peak_bytes(run)
    row["peak_gib"] = None if peak is None else peak / GIB
    if with_floor:
        row["floor_ms"] = floor(args[0].shape[1], mode)
    outs = (out,) if mode == "fwd" else tuple(out)
    if reference is not None:
        row["error"] = max(rel_error(a, b) for a, b in zip(outs, reference, strict=True))
    return report_row("simple_gla", args[0].shape[1], row, started), outs


def fla_rows(name, args, do, modes, reference):
    """FLA's kernel on the same inputs (copied to torch), timed with `do_bench`."""
    try:
        import torch
        from fla.ops.lightning_attn import chunk_lightning_attn
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # noqa: BLE001
        return [{"impl": name, "mode": m, "ms": None, "error": f"FLA unavailable: {message(e)}"}
                for m in modes]

    def to_torch(x):
        t = torch.from_numpy(np.array(jnp.asarray(x, jnp.float32))).cuda()
        return t.to(torch.bfloat16) if x.dtype == jnp.bfloat16 else t

    if len(args) == 3:
        def op(q, k, v):
            return chunk_lightning_attn(q, k, v, LAYER_IDX, NUM_LAYERS)[0]
    else:
        def op(q, k, v, g):
            return chunk_simple_gla(q, k, v, g=g)[0]

    tensors = [to_torch(x) for x in args]
    tdo = to_torch(do)
    rows = []
    for mode in modes:
        started = time.perf_counter()
        try:
            if mode == "fwd":
                def fn():
                    with torch.no_grad():
                        return [op(*tensors)]
            else:
                leaves = [t.detach().clone().requires_grad_() for t in tensors]

                def fn():
                    for t in leaves:
                        t.grad = None
                    op(*leaves).backward(tdo)
                    return [t.grad for t in leaves]

            out = fn()
            row = {"impl": name, "mode": mode, "ms": time_torch(fn),
                   "peak_gib": torch_peak_bytes(fn) / GIB,
                   "floor_ms": floor(args[0].shape[1], mode)}
            if reference.get(mode) is not None:
                mine = [np.asarray(t.detach().float().cpu().numpy()) for t in out]
                pairs = zip(mine, reference[mode], strict=True)
                row["error"] = max(rel_error(a, b) for a, b in pairs)
            rows.append(report_row("simple_gla", args[0].shape[1], row, started))
        except Exception as e:  # noqa: BLE001
            rows.append({"impl": name, "mode": mode, "ms": None, "error": message(e)})
        finally:
            torch.cuda.empty_cache()
    return rows


def _guarded(name, mode, T, fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - OOM or a missing backend: record it, keep going
        print(f"[simple_gla] {name} {mode} T={T} failed: {message(e)}", file=sys.stderr, flush=True)
        return {"impl": name, "mode": mode, "ms": None, "error": message(e)}, None


def _family(T, modes, names, fns, args, do, fla_name):
    """xla (the reference) first, then pallas, then FLA."""
    rows, reference = [], {}
    for mode in modes:
        row, outs = _guarded(names[0], mode, T,
                             lambda: jax_row(names[0], fns[0], args, do, mode, None))
        if outs is not None:
            row["error"] = 0.0
        reference[mode] = None if outs is None else [np.asarray(x, np.float32) for x in outs]
        rows.append(row)
    for mode in modes:
        rows.append(_guarded(names[1], mode, T, lambda: jax_row(
            names[1], fns[1], args, do, mode, reference[mode]))[0])
    return rows + fla_rows(fla_name, args, do, modes, reference)


def rows(T: int, modes) -> list[dict]:
    q, k, v, g, do = make_inputs(T)
    out = _family(T, modes, ("xla", "pallas"), (lightning("xla"), lightning("pallas")),
                  (q, k, v), do, "fla chunk_lightning_attn")
    for mode in modes:
        out.append(_guarded("cudnn flash (causal)", mode, T, lambda: jax_row(
            "cudnn flash (causal)", cudnn, (q, k, v), do, mode, None, with_floor=False))[0])
    if T in GATED_T:
        out += _family(T, modes, ("xla (g)", "pallas (g)"), (gated("xla"), gated("pallas")),
                       (q, k, v, g), do, "fla chunk_simple_gla (g)")
    for r in out:
        ms = f"{r['ms']:.3f} ms" if r.get("ms") is not None else f"failed ({r.get('error')})"
        print(f"[simple_gla] T={T} {r['impl']:>26} {r['mode']:>8}: {ms}", file=sys.stderr,
              flush=True)
    return out
