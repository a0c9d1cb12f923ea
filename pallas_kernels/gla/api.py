"""GLA kernels as differentiable JAX functions: padding, `jax.custom_vjp` glue, block sizes.

Both entry points take FLA's layout (q, k, g `[B, T, H, K]`, v `[B, T, H, V]`, state
`[B, H, K, V]` float32) and return `(o, final_state)`. Inside, T is padded to a multiple of the
chunk (gates with 0: no decay, q/k/v with 0: no contribution) and K, V to powers of two >= 16;
gradients flow through the padding and slicing by ordinary autodiff, and through the kernels by
the custom VJPs below (jax.grad cannot differentiate a raw `pallas_call`): each takes a frozen
`_Static` of the launch's constants first, the differentiable arrays, then the packing arrays
(integers and flags, whose cotangents are None).

Packed documents: `resets [B, T]` (segment_ids) become float32 `starts`, zero-padded with T;
per-document states come as `chunk_docs [NT]` for documents already aligned to chunks (the
chunked form) or `docs [T]` (the recurrent form), turned into first/last flags and document
indices; initial and final states are then `[N, H, K, V]`.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels._common import default_interpret, pad_axis, padded_dim
from pallas_kernels.gla.chunk_bwd import chunk_bwd
from pallas_kernels.gla.chunk_fwd import chunk_fwd
from pallas_kernels.gla.common import F32, is_tracer, operand_dtype
from pallas_kernels.gla.config import MAX_CHUNK, MAX_HEAD_DIM, BlockSizes
from pallas_kernels.gla.recurrent import recurrent_bwd, recurrent_fwd


@dataclasses.dataclass(frozen=True)
class _Static:
    scale: float
    block_sizes: BlockSizes
    interpret: bool
    packing: str | None  # None, "segments" or "documents"


def _packed(st: _Static, flags):
    return None if st.packing is None else (st.packing, flags)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunk(st: _Static, q, k, v, g, h0, flags):
    o, ht, _ = chunk_fwd(q, k, v, g, h0, scale=st.scale, block_sizes=st.block_sizes,
                         interpret=st.interpret, packed=_packed(st, flags))
    return o, ht


def _chunk_forward(st: _Static, q, k, v, g, h0, flags):
    o, ht, hs = chunk_fwd(q, k, v, g, h0, scale=st.scale, block_sizes=st.block_sizes,
                          interpret=st.interpret, packed=_packed(st, flags))
    return (o, ht), (q, k, v, g, hs, flags)


def _chunk_backward(st: _Static, residuals, cotangents):
    q, k, v, g, hs, flags = residuals
    do, dht = cotangents
    grads = chunk_bwd(q, k, v, g, hs, do.astype(q.dtype), dht, scale=st.scale,
                      block_sizes=st.block_sizes, interpret=st.interpret,
                      packed=_packed(st, flags))
    return (*grads, None)


_chunk.defvjp(_chunk_forward, _chunk_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrent(st: _Static, q, k, v, g, h0, flags):
    return recurrent_fwd(q, k, v, g, h0, scale=st.scale, block_sizes=st.block_sizes,
                         interpret=st.interpret, packed=_packed(st, flags))


def _recurrent_forward(st: _Static, q, k, v, g, h0, flags):
    o, ht = recurrent_fwd(q, k, v, g, h0, scale=st.scale, block_sizes=st.block_sizes,
                          interpret=st.interpret, packed=_packed(st, flags))
    return (o, ht), (q, k, v, g, h0, ht, flags)


def _recurrent_backward(st: _Static, residuals, cotangents):
    q, k, v, g, h0, ht, flags = residuals
    do, dht = cotangents
    grads = recurrent_bwd(q, k, v, g, h0, ht, do.astype(q.dtype), dht, scale=st.scale,
                          block_sizes=st.block_sizes, interpret=st.interpret,
                          packed=_packed(st, flags))
    return (*grads, None)


_recurrent.defvjp(_recurrent_forward, _recurrent_backward)


def _edges(docs):
    """`[n]` documents -> (first, last) float32 flags and indices clamped to >= 0 (padding: -1)."""
    real = docs >= 0
    before = jnp.concatenate([jnp.full((1,), -1, docs.dtype), docs[:-1]])
    after = jnp.concatenate([docs[1:], jnp.full((1,), -1, docs.dtype)])
    first = (real & (docs != before)).astype(F32)
    last = (real & (docs != after)).astype(F32)
    return first, last, jnp.maximum(docs, 0).astype(jnp.int32)


def _check(q, k, v, g, initial_state, num_states=None):
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
    S = B if num_states is None else num_states
    if initial_state is not None and initial_state.shape != (S, H, K, V):
        raise ValueError(
            f"initial_state must be [B or N, H, K, V] = {(S, H, K, V)}, "
            f"got {initial_state.shape=}")


def _static_scale(scale, q):
    """(python float baked into the kernels, q) — a traced scale is folded into q instead."""
    if scale is None:
        return float(q.shape[-1]) ** -0.5, q
    if isinstance(scale, numbers.Number):
        return float(scale), q
    if not is_tracer(scale):
        return float(np.asarray(scale)), q
    return 1.0, (q.astype(F32) * scale).astype(q.dtype)


def _prepare(q, k, v, g, initial_state, T_multiple, num_states=None):
    """Pad to kernel shapes; returns padded (q, k, v, g float32, h0 float32) and (T, K, V)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    Tp = -(-T // T_multiple) * T_multiple

    def pad(x, D):
        return pad_axis(pad_axis(x, 1, Tp), 3, D)

    S = B if num_states is None else num_states
    h0 = jnp.zeros((S, H, K, V), F32) if initial_state is None else initial_state.astype(F32)
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
    resets: optional `[B, T]` bool, True where a document starts (segment_ids).
    chunk_docs: optional `[NT]` int32 for documents aligned to chunks (B = 1, T = NT * chunk,
      the chunk implied; -1 on padding chunks): initial and final states are `[num_docs, H, K,
      V]`, one per document.
    Returns `(o [B, T, H, V] in q.dtype, final_state float32 or None)`.
    """
    documents = chunk_docs is not None
    _check(q, k, v, g, initial_state, num_docs if documents else None)
    scale, q = _static_scale(scale, q)
    interpret = default_interpret() if interpret is None else interpret
    T, K, V = q.shape[1], q.shape[-1], v.shape[-1]
    if documents:
        chunk_size = T // chunk_docs.shape[0]
        if chunk_size * chunk_docs.shape[0] != T or chunk_size > MAX_CHUNK:
            raise ValueError(f"aligned documents need T = NT * chunk with chunk <= {MAX_CHUNK}, "
                             f"got T={T}, chunk_docs.shape={chunk_docs.shape}")
    dims = dict(head_dim_k=K, head_dim_v=V, seq_len=T)
    bs = block_sizes or BlockSizes.get_default(**dims, chunk=min(chunk_size, MAX_CHUNK))
    if documents:
        bs = dataclasses.replace(bs, chunk=chunk_size)
    bs = bs.for_call(**dims)
    (qp, kp, vp, gp, h0), (T, K, V) = _prepare(q, k, v, g, initial_state, bs.chunk,
                                               num_docs if documents else None)
    if documents:
        packing, flags = "documents", _edges(chunk_docs)
    elif resets is not None:
        packing, flags = "segments", pad_axis(resets.astype(F32), 1, qp.shape[1])
    else:
        packing, flags = None, None
    o, ht = _chunk(_Static(scale, bs, interpret, packing), qp, kp, vp, gp, h0, flags)
    o = o[:, :T, :, :V]
    return o, (ht[:, :, :K, :V] if output_final_state else None)


def fused_recurrent_gla(q, k, v, g, *, scale=None, initial_state=None,
                        output_final_state: bool = False, resets=None, docs=None,
                        num_docs: int = 0, block_sizes: BlockSizes | None = None,
                        interpret: bool | None = None):
    """GLA as a token-by-token recurrence in one kernel (FLA's `fused_recurrent_gla`).

    Same arguments and returns as `chunk_gla`; the choice for decoding and short inputs.
    Per-document states come as `docs [T]` int32 (B = 1), the document of every step.
    """
    documents = docs is not None
    _check(q, k, v, g, initial_state, num_docs if documents else None)
    scale, q = _static_scale(scale, q)
    interpret = default_interpret() if interpret is None else interpret
    K, V = q.shape[-1], v.shape[-1]
    dims = dict(head_dim_k=K, head_dim_v=V, seq_len=q.shape[1])
    bs = (block_sizes or BlockSizes.get_default(**dims)).for_call(**dims)
    (qp, kp, vp, gp, h0), (T, K, V) = _prepare(q, k, v, g, initial_state, 1,
                                               num_docs if documents else None)
    if documents:
        packing, flags = "documents", _edges(docs)
    elif resets is not None:
        packing, flags = "segments", resets.astype(F32)
    else:
        packing, flags = None, None
    o, ht = _recurrent(_Static(scale, bs, interpret, packing), qp, kp, vp, gp, h0, flags)
    o = o[:, :, :, :V]
    return o, (ht[:, :, :K, :V] if output_final_state else None)
