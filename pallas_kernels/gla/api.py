"""GLA kernels as differentiable JAX functions: padding, `jax.custom_vjp` glue, block sizes.

Both entry points take FLA's layout (q, k, g `[B, T, H, K]`, v `[B, T, H, V]`, state
`[B, H, K, V]` float32) and return `(o, final_state)`. Inside, T is padded to a multiple of the
chunk (gates with 0: no decay, q/k/v with 0: no contribution) and K, V to powers of two >= 16;
gradients flow through the padding and slicing by ordinary autodiff, and through the kernels by
the custom VJPs below (jax.grad cannot differentiate a raw `pallas_call`).
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._common import default_interpret, pad_axis, padded_dim
from pallas_kernels.gla.chunk_bwd import chunk_bwd
from pallas_kernels.gla.chunk_fwd import chunk_fwd
from pallas_kernels.gla.common import F32, is_tracer, operand_dtype
from pallas_kernels.gla.config import MAX_HEAD_DIM, BlockSizes
from pallas_kernels.gla.recurrent import recurrent_bwd, recurrent_fwd


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _chunk(q, k, v, g, h0, scale, block_sizes, interpret):
    o, ht, _ = chunk_fwd(q, k, v, g, h0, scale=scale, block_sizes=block_sizes, interpret=interpret)
    return o, ht


def _chunk_forward(q, k, v, g, h0, scale, block_sizes, interpret):
    o, ht, hs = chunk_fwd(q, k, v, g, h0, scale=scale, block_sizes=block_sizes,
                          interpret=interpret)
    return (o, ht), (q, k, v, g, hs)


def _chunk_backward(scale, block_sizes, interpret, residuals, cotangents):
    q, k, v, g, hs = residuals
    do, dht = cotangents
    return chunk_bwd(q, k, v, g, hs, do.astype(q.dtype), dht, scale=scale,
                     block_sizes=block_sizes, interpret=interpret)


_chunk.defvjp(_chunk_forward, _chunk_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _recurrent(q, k, v, g, h0, scale, block_sizes, interpret):
    return recurrent_fwd(q, k, v, g, h0, scale=scale, block_sizes=block_sizes, interpret=interpret)


def _recurrent_forward(q, k, v, g, h0, scale, block_sizes, interpret):
    o, ht = recurrent_fwd(q, k, v, g, h0, scale=scale, block_sizes=block_sizes,
                          interpret=interpret)
    return (o, ht), (q, k, v, g, h0, ht)


def _recurrent_backward(scale, block_sizes, interpret, residuals, cotangents):
    q, k, v, g, h0, ht = residuals
    do, dht = cotangents
    return recurrent_bwd(q, k, v, g, h0, ht, do.astype(q.dtype), dht, scale=scale,
                         block_sizes=block_sizes, interpret=interpret)


_recurrent.defvjp(_recurrent_forward, _recurrent_backward)


def _check(q, k, v, g, initial_state):
    if q.ndim != 4 or k.shape != q.shape or g.shape != q.shape:
        raise ValueError(
            f"q, k, g must share a [B, T, H, K] shape, got {q.shape=}, {k.shape=}, {g.shape=}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] matching q, got {q.shape=}, {v.shape=}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype=}, {k.dtype=}, {v.dtype=}")
    operand_dtype(q.dtype)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if K > MAX_HEAD_DIM:
        raise ValueError(f"the GLA Pallas kernels take K <= {MAX_HEAD_DIM}, got K={K} ({q.shape=})")
    if V > MAX_HEAD_DIM:
        raise ValueError(f"the GLA Pallas kernels take V <= {MAX_HEAD_DIM}, got V={V} ({v.shape=})")
    if initial_state is not None and initial_state.shape != (B, H, K, V):
        raise ValueError(
            f"initial_state must be [B, H, K, V] = {(B, H, K, V)}, got {initial_state.shape=}")


def _static_scale(scale, q):
    """(python float baked into the kernels, q) — a traced scale is folded into q instead."""
    if scale is None:
        return float(q.shape[-1]) ** -0.5, q
    if isinstance(scale, numbers.Number):
        return float(scale), q
    if not is_tracer(scale):
        return float(np.asarray(scale)), q
    return 1.0, (q.astype(F32) * scale).astype(q.dtype)


def _prepare(q, k, v, g, initial_state, T_multiple):
    """Pad to kernel shapes; returns padded (q, k, v, g float32, h0 float32) and (T, K, V)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    Tp = -(-T // T_multiple) * T_multiple

    def pad(x, D):
        return pad_axis(pad_axis(x, 1, Tp), 3, D)

    h0 = jnp.zeros((B, H, K, V), F32) if initial_state is None else initial_state.astype(F32)
    h0 = pad_axis(pad_axis(h0, 2, Kp), 3, Vp)
    return (pad(q, Kp), pad(k, Kp), pad(v, Vp), pad(g.astype(F32), Kp), h0), (T, K, V)


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state: bool = False,
              chunk_size: int = 64, resets=None, chunk_docs=None, num_docs: int = 0,
              block_sizes: BlockSizes | None = None, interpret: bool | None = None):
    """Chunked GLA with Pallas kernels (FLA's `chunk_gla`).

    q, k, g: `[B, T, H, K]`; v: `[B, T, H, V]`; q, k, v float32 or bfloat16, g log-decays
    (<= 0, any float dtype, used in float32); K, V <= 256; any T. scale defaults to `K ** -0.5`.
    initial_state: optional `[B, H, K, V]` (float32 inside). `chunk_size` above 128 runs as 128;
    `block_sizes` overrides the defaults (its `chunk` wins over `chunk_size`); `interpret`
    defaults to True off GPU.
    Returns `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32 or None)`.
    """
    if resets is not None or chunk_docs is not None:
        raise NotImplementedError("packed documents in the GLA kernels")
    _check(q, k, v, g, initial_state)
    scale, q = _static_scale(scale, q)
    interpret = default_interpret() if interpret is None else interpret
    K, V = q.shape[-1], v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    bs = block_sizes or BlockSizes.get_default(Kp, Vp, chunk=chunk_size)
    bs = bs.for_dims(Kp, Vp, q.shape[1])
    (qp, kp, vp, gp, h0), (T, K, V) = _prepare(q, k, v, g, initial_state, bs.chunk)
    o, ht = _chunk(qp, kp, vp, gp, h0, scale, bs, interpret)
    o = o[:, :T, :, :V]
    return o, (ht[:, :, :K, :V] if output_final_state else None)


def fused_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None,
                        output_final_state: bool = False, resets=None, docs=None,
                        num_docs: int = 0, block_sizes: BlockSizes | None = None,
                        interpret: bool | None = None):
    """GLA as a token-by-token recurrence in one kernel (FLA's `fused_recurrent_gla`).

    Same arguments and returns as `chunk_gla`; the choice for decoding and short inputs.
    """
    if resets is not None or docs is not None:
        raise NotImplementedError("packed documents in the GLA kernels")
    _check(q, k, v, g, initial_state)
    scale, q = _static_scale(scale, q)
    interpret = default_interpret() if interpret is None else interpret
    K, V = q.shape[-1], v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    bs = (block_sizes or BlockSizes.get_default(Kp, Vp)).for_dims(Kp, Vp, q.shape[1])
    (qp, kp, vp, gp, h0), (T, K, V) = _prepare(q, k, v, g, initial_state, 1)
    o, ht = _recurrent(qp, kp, vp, gp, h0, scale, bs, interpret)
    o = o[:, :, :, :V]
    return o, (ht[:, :, :K, :V] if output_final_state else None)
