"""Pure-JAX simple GLA (one scalar log-decay per head and step): the spec and the chunked form.

Inputs are validated by `jaxla.ops.simple_gla`; `g` here is the total log-decay `[B, T, H]`
(data-dependent gate plus the constant `g_gamma`), already <= 0.

Recurrence: `S_t = exp(g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops._checks import compute_dtype
from jaxla.ops.reference.gla import (
    _einsum,
    from_chunks,
    naive_gla,
    pad_time,
    scan_chunk_states,
    to_chunks,
)


def naive_simple_gla(q, k, v, g, *, scale, initial_state=None):
    """The spec: GLA's step recurrence with the head's scalar gate shared by every key row."""
    g_rows = jnp.broadcast_to(g[..., None], q.shape[:3] + (q.shape[-1],))
    return naive_gla(q, k, v, g_rows, scale=scale, initial_state=initial_state)


def chunk_simple_gla(q, k, v, g, *, scale, initial_state=None, chunk_size=64):
    """Chunked simple GLA: the scalar gate turns the in-chunk decay into a `[C, C]` mask on q k^T."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    qc, kc, vc = (to_chunks(pad_time(x, C), C, cd) for x in (q, k, v))
    G = jnp.cumsum(to_chunks(pad_time(g[..., None], C), C, cd)[..., 0], axis=3)  # [B,H,N,C]
    G_last = G[..., -1:]

    update = _einsum("bhnck,bhncv->bhnkv", kc * jnp.exp(G_last - G)[..., None], vc)
    h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
    states, final = scan_chunk_states(jnp.exp(G_last[..., 0]), update, h0)

    causal = jnp.tril(jnp.ones((C, C), bool))
    decay = jnp.exp(jnp.where(causal, G[..., :, None] - G[..., None, :], 0.0)) * causal
    scores = _einsum("bhnck,bhndk->bhncd", qc, kc) * decay
    o = _einsum("bhncd,bhndv->bhncv", scores, vc)
    o = o + _einsum("bhnck,bhnkv->bhncv", qc * jnp.exp(G)[..., None], states)
    o = from_chunks(o * scale)[:, :T]
    return o.astype(q.dtype), final
