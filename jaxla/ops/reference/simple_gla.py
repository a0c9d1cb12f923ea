"""Pure-JAX simple GLA (one scalar log-decay per head and step): the spec and the chunked form.

Inputs are validated by `jaxla.ops.simple_gla`; `g` here is the total log-decay `[B, T, H]`
(data-dependent gate plus the constant `g_gamma`), already <= 0. `packing` as in
`jaxla.ops.reference.gla`.

Recurrence: `S_t = exp(g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops._checks import compute_dtype
from jaxla.ops.reference.gla import (
    _einsum,
    chunk_segments,
    from_chunks,
    naive_gla,
    pad_time,
    per_document,
    scan_chunk_states,
    to_chunks,
)


def naive_simple_gla(q, k, v, g, *, scale, initial_state=None, packing=None):
    """The spec: GLA's step recurrence with the head's scalar gate shared by every key row."""
    g_rows = jnp.broadcast_to(g[..., None], q.shape[:3] + (q.shape[-1],))
    return naive_gla(q, k, v, g_rows, scale=scale, initial_state=initial_state, packing=packing)


def chunk_simple_gla(q, k, v, g, *, scale, initial_state=None, chunk_size=64, packing=None):
    """Chunked simple GLA: the scalar gate turns the in-chunk decay into a `[C, C]` mask on q k^T."""
    if packing is not None and packing.per_document_states:
        core = lambda *xs, **kw: _chunk_simple_gla(*xs, scale=scale, chunk_size=chunk_size, **kw)  # noqa: E731
        H, K, V = q.shape[2], q.shape[3], v.shape[3]
        return per_document(core, (q, k, v, g), initial_state, packing, chunk_size, (H, K, V))
    return _chunk_simple_gla(q, k, v, g, scale=scale, chunk_size=chunk_size,
                             initial_state=initial_state,
                             resets=None if packing is None else packing.resets)


def _chunk_simple_gla(q, k, v, g, *, scale, chunk_size, initial_state=None, resets=None,
                      chunk_docs=None, initial_states=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    qc, kc, vc = (to_chunks(pad_time(x, C), C, cd) for x in (q, k, v))
    G = jnp.cumsum(to_chunks(pad_time(g[..., None], C), C, cd)[..., 0], axis=3)  # [B,H,N,C]
    G_last = G[..., -1:]

    causal = jnp.tril(jnp.ones((C, C), bool))
    w_update, w_inter, decay = jnp.exp(G_last - G), jnp.exp(G), jnp.exp(G_last[..., 0])
    if resets is not None:
        e = chunk_segments(resets, C)
        causal = causal & (e[..., :, None] == e[..., None, :])
        w_inter = w_inter * (e == 0)
        w_update = w_update * (e == e[..., -1:])
        decay = decay * (e[..., -1] == 0)

    update = _einsum("bhnck,bhncv->bhnkv", kc * w_update[..., None], vc)
    h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
    if initial_states is not None:
        initial_states = initial_states.astype(cd)
    states, final = scan_chunk_states(decay, update, h0, chunk_docs=chunk_docs,
                                      initial_states=initial_states)

    pair_decay = jnp.exp(jnp.where(causal, G[..., :, None] - G[..., None, :], 0.0)) * causal
    scores = _einsum("bhnck,bhndk->bhncd", qc, kc) * pair_decay
    o = _einsum("bhncd,bhndv->bhncv", scores, vc)
    o = o + _einsum("bhnck,bhnkv->bhncv", qc * w_inter[..., None], states)
    o = from_chunks(o * scale)[:, :T]
    return o.astype(q.dtype), final
