"""Gated Linear Attention (Yang et al., 2024): `S_t = diag(exp g_t) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`."""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops import _checks as checks
from jaxla.ops._sharding import batch_sharded_call
from jaxla.ops.reference.gla import chunk_gla, naive_gla

# Implementations that exist for each entry point.
_CHUNK_IMPLEMENTATIONS = ("pallas", "xla", "naive")
_RECURRENT_IMPLEMENTATIONS = ("pallas", "xla", "naive")


def _validate(q, k, v, g, initial_state, scale):
    checks.check_rank("q", q, 4, "[B, T, H, K]")
    checks.check_rank("k", k, 4, "[B, T, H, K]")
    checks.check_rank("v", v, 4, "[B, T, H, V]")
    checks.check_rank("g", g, 4, "[B, T, H, K]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K], got {q.shape=}, {k.shape=}")
    if g.shape != q.shape:
        raise ValueError(f"g must have the shape of q [B, T, H, K], got {q.shape=}, {g.shape=}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in B, T, H: {q.shape=}, {v.shape=}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype=}, {k.dtype=}, {v.dtype=}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got {q.shape=}")
    checks.check_state("initial_state", initial_state, (B, H, K, V), "[B, H, K, V]", q.dtype)
    checks.check_scale(scale)
    checks.check_nonpositive("g", g)
    return K


def _kernel_supports(q, v, implementation):
    """Whether the Pallas kernels take these inputs (K, V <= 256; float32 or bfloat16 q, k, v).

    With `implementation="pallas"` anything else is an error naming the argument; with
    `implementation=None` (pallas on GPU) such inputs fall back to the chunked XLA path.
    """
    from pallas_kernels.gla import MAX_HEAD_DIM

    problem = None
    if q.shape[-1] > MAX_HEAD_DIM:
        problem = ValueError(
            f"implementation='pallas' takes q/k head dim K <= {MAX_HEAD_DIM}, got {q.shape=}; "
            "use implementation='xla'")
    elif v.shape[-1] > MAX_HEAD_DIM:
        problem = ValueError(
            f"implementation='pallas' takes v head dim V <= {MAX_HEAD_DIM}, got {v.shape=}; "
            "use implementation='xla'")
    elif q.dtype not in (jnp.float32, jnp.bfloat16):
        problem = TypeError(
            f"implementation='pallas' takes float32 or bfloat16 q, k, v, got {q.dtype=}; "
            "use implementation='xla'")
    if problem is not None and implementation == "pallas":
        raise problem
    return problem is None


def gla(
    q,
    k,
    v,
    g,
    *,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    implementation: checks.Implementation | None = None,
):
    """Chunked Gated Linear Attention (FLA's `chunk_gla`).

    Args:
      q, k: `[B, T, H, K]`; v: `[B, T, H, V]`; all one float dtype.
      g: `[B, T, H, K]` log-decays (<= 0), e.g. `logsigmoid(x) / 16`; kept in float32 inside.
      scale: multiplies q; defaults to `K ** -0.5`.
      initial_state: optional float32 `[B, H, K, V]`.
      output_final_state: also return the float32 final state.
      chunk_size: power of two in [16, 256]; T need not be a multiple (padded inside).
      implementation: "pallas" (kernel; K, V <= 256, float32/bfloat16), "xla" (chunked pure JAX),
        "naive" (step scan, the spec), or None: pallas on GPU when the kernel takes the inputs,
        xla otherwise.

    Returns:
      `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32 or None)`.
    """
    K = _validate(q, k, v, g, initial_state, scale)
    checks.check_chunk_size(chunk_size)
    impl = checks.resolve_implementation(implementation, _CHUNK_IMPLEMENTATIONS, "gla")
    scale = K**-0.5 if scale is None else scale
    if impl == "pallas" and _kernel_supports(q, v, implementation):
        from pallas_kernels.gla import chunk_gla as chunk_gla_kernel

        def kernel(q, k, v, g, initial_state):
            return chunk_gla_kernel(
                q, k, v, g, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, chunk_size=chunk_size,
            )

        return batch_sharded_call(kernel, (q, k, v, g, initial_state), (True,) * 5)
    if impl == "naive":
        o, final = naive_gla(q, k, v, g, scale=scale, initial_state=initial_state)
    else:
        o, final = chunk_gla(
            q, k, v, g, scale=scale, initial_state=initial_state, chunk_size=chunk_size
        )
    return o, (final if output_final_state else None)


def gla_recurrent(
    q,
    k,
    v,
    g,
    *,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    implementation: checks.Implementation | None = None,
):
    """GLA in its recurrent form, one state update per token (FLA's `fused_recurrent_gla`).

    The form for decoding and short inputs: no chunk padding, O(1) work per token. Same arguments
    and returns as `gla`. "pallas" is one fused kernel walking the tokens (K, V <= 256); "xla" and
    "naive" both run the step recurrence as a `lax.scan`.
    """
    K = _validate(q, k, v, g, initial_state, scale)
    impl = checks.resolve_implementation(
        implementation, _RECURRENT_IMPLEMENTATIONS, "gla_recurrent")
    scale = K**-0.5 if scale is None else scale
    if impl == "pallas" and _kernel_supports(q, v, implementation):
        from pallas_kernels.gla import fused_recurrent_gla

        def kernel(q, k, v, g, initial_state):
            return fused_recurrent_gla(
                q, k, v, g, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state,
            )

        return batch_sharded_call(kernel, (q, k, v, g, initial_state), (True,) * 5)
    o, final = naive_gla(q, k, v, g, scale=scale, initial_state=initial_state)
    return o, (final if output_final_state else None)
