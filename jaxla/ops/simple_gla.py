"""Simple GLA: linear attention with one scalar log-decay per head and step (FLA's `chunk_simple_gla`).

`S_t = exp(g_t + g_gamma) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`, with a data-dependent
gate `g: [B, T, H]` and/or a constant per-head decay `g_gamma: [H]` (RetNet, Lightning Attention).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops import _checks as checks
from jaxla.ops._sharding import batch_sharded_call
from jaxla.ops.reference.simple_gla import chunk_simple_gla, naive_simple_gla

_CHUNK_IMPLEMENTATIONS = ("pallas", "xla", "naive")
_RECURRENT_IMPLEMENTATIONS = ("pallas", "xla", "naive")
_PALLAS_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
_PALLAS_MAX_HEAD_DIM = 256  # pallas_kernels.simple_gla.MAX_HEAD_DIM (not imported eagerly)


def _validate(q, k, v, g, g_gamma, initial_state, scale):
    checks.check_rank("q", q, 4, "[B, T, H, K]")
    checks.check_rank("k", k, 4, "[B, T, H, K]")
    checks.check_rank("v", v, 4, "[B, T, H, V]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K], got {q.shape=}, {k.shape=}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in B, T, H: {q.shape=}, {v.shape=}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype=}, {k.dtype=}, {v.dtype=}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got {q.shape=}")
    if g is not None:
        checks.check_shape("g", g, (B, T, H), "[B, T, H]")
        checks.check_nonpositive("g", g)
    if g_gamma is not None:
        checks.check_shape("g_gamma", g_gamma, (H,), "[H]")
        checks.check_nonpositive("g_gamma", g_gamma)
    checks.check_state("initial_state", initial_state, (B, H, K, V), "[B, H, K, V]", q.dtype)
    checks.check_scale(scale)
    return K


def _resolve(implementation, available, op, q, v):
    """`None` picks the kernel on GPU only for inputs it takes; explicit "pallas" checks them."""
    impl = checks.resolve_implementation(implementation, available, op)
    if impl != "pallas":
        return impl
    K, V = q.shape[-1], v.shape[-1]
    fits = (K <= _PALLAS_MAX_HEAD_DIM and V <= _PALLAS_MAX_HEAD_DIM
            and jnp.dtype(q.dtype) in _PALLAS_DTYPES)
    if implementation is None and not fits:
        return "xla"
    if K > _PALLAS_MAX_HEAD_DIM:
        raise ValueError(
            f"implementation='pallas' supports K <= {_PALLAS_MAX_HEAD_DIM}, got {q.shape=}")
    if V > _PALLAS_MAX_HEAD_DIM:
        raise ValueError(
            f"implementation='pallas' supports V <= {_PALLAS_MAX_HEAD_DIM}, got {v.shape=}")
    if jnp.dtype(q.dtype) not in _PALLAS_DTYPES:
        raise TypeError(
            f"implementation='pallas' takes bfloat16, float16 or float32 inputs, got {q.dtype=}")
    return impl


def total_gate(q, g, g_gamma):
    """The per-step log-decay `[B, T, H]` in float32 (float64 for float64 inputs)."""
    cd = checks.compute_dtype(
        q.dtype, None if g is None else g.dtype, None if g_gamma is None else g_gamma.dtype
    )
    total = jnp.zeros(q.shape[:3], cd)
    if g is not None:
        total = total + g.astype(cd)
    if g_gamma is not None:
        total = total + g_gamma.astype(cd)
    return total


def simple_gla(
    q,
    k,
    v,
    g=None,
    *,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    implementation: checks.Implementation | None = None,
):
    """Chunked simple GLA.

    Args:
      q, k: `[B, T, H, K]`; v: `[B, T, H, V]`; all one float dtype.
      g: optional `[B, T, H]` data-dependent log-decays (<= 0).
      g_gamma: optional `[H]` constant log-decay per head (<= 0). With neither, no decay.
      scale, initial_state, output_final_state, chunk_size, implementation: as in `jaxla.ops.gla`.
        "pallas" (the default on GPU) takes bf16/f16/f32 inputs with K, V <= 256; it uses
        `chunk_size` as its chunk; a constant gate (numpy g_gamma, as lightning attention
        passes) gets no gradient work in the backward.

    Returns:
      `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32 or None)`.
    """
    K = _validate(q, k, v, g, g_gamma, initial_state, scale)
    checks.check_chunk_size(chunk_size)
    impl = _resolve(implementation, _CHUNK_IMPLEMENTATIONS, "simple_gla", q, v)
    scale = K**-0.5 if scale is None else scale
    if impl == "pallas":
        from pallas_kernels import simple_gla as kernels

        def kernel(q, k, v, g, g_gamma, initial_state):
            return kernels.simple_gla(
                q, k, v, g, g_gamma, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, chunk=chunk_size,
            )

        return batch_sharded_call(kernel, (q, k, v, g, g_gamma, initial_state),
                                  (True, True, True, True, False, True))
    gate = total_gate(q, g, g_gamma)
    if impl == "naive":
        o, final = naive_simple_gla(q, k, v, gate, scale=scale, initial_state=initial_state)
    else:
        o, final = chunk_simple_gla(
            q, k, v, gate, scale=scale, initial_state=initial_state, chunk_size=chunk_size
        )
    return o, (final if output_final_state else None)


def simple_gla_recurrent(
    q,
    k,
    v,
    g=None,
    *,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    implementation: checks.Implementation | None = None,
):
    """Simple GLA in its recurrent form (decoding, short inputs); arguments as `simple_gla`.

    "pallas" runs one step per loop iteration in a kernel (its gradients use the chunked
    backward kernels); "xla" and "naive" both run the step-by-step spec.
    """
    K = _validate(q, k, v, g, g_gamma, initial_state, scale)
    impl = _resolve(implementation, _RECURRENT_IMPLEMENTATIONS, "simple_gla_recurrent", q, v)
    scale = K**-0.5 if scale is None else scale
    if impl == "pallas":
        from pallas_kernels import simple_gla as kernels

        def kernel(q, k, v, g, g_gamma, initial_state):
            return kernels.simple_gla_recurrent(
                q, k, v, g, g_gamma, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state,
            )

        return batch_sharded_call(kernel, (q, k, v, g, g_gamma, initial_state),
                                  (True, True, True, True, False, True))
    gate = total_gate(q, g, g_gamma)
    o, final = naive_simple_gla(q, k, v, gate, scale=scale, initial_state=initial_state)
    return o, (final if output_final_state else None)
