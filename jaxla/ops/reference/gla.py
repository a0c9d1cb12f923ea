"""Pure-JAX Gated Linear Attention: the step-by-step spec and the chunked XLA form.

Both take validated inputs (see `jaxla.ops.gla`): q, k, g `[B, T, H, K]`, v `[B, T, H, V]`,
log-decays g <= 0, state `[B, H, K, V]`. They compute in float32 (float64 for float64 inputs) and
return `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32/64)`.

Recurrence: `S_t = diag(exp g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxla.ops._checks import compute_dtype

HIGHEST = lax.Precision.HIGHEST
SUB_CHUNK = 16  # rows whose pairwise gate products are formed exactly (FLA's secondary chunking)


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=HIGHEST)


def naive_gla(q, k, v, g, *, scale, initial_state=None):
    """The spec: a `lax.scan` over time, one rank-1 state update per step."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
    time_major = [jnp.moveaxis(x.astype(cd), 1, 0) for x in (q, k, v, g)]

    def step(h, x):
        q_t, k_t, v_t, g_t = x
        h = h * jnp.exp(g_t)[..., None] + k_t[..., :, None] * v_t[..., None, :]
        o_t = _einsum("bhk,bhkv->bhv", q_t * scale, h)
        return h, o_t

    h, o = lax.scan(step, h0, time_major)
    return jnp.moveaxis(o, 0, 1).astype(q.dtype), h


def pad_time(x, multiple: int):
    """Zero-pad axis 1 (time) up to a multiple of `multiple`. Zero gates mean 'no decay'."""
    T = x.shape[1]
    pad = -T % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def to_chunks(x, chunk_size: int, dtype):
    """`[B, T, H, ...]` (T a multiple of chunk_size) -> `[B, H, N, C, ...]` in `dtype`."""
    B, T, H = x.shape[:3]
    x = x.reshape(B, T // chunk_size, chunk_size, H, *x.shape[3:])
    return jnp.moveaxis(x, 3, 1).astype(dtype)


def from_chunks(x):
    """`[B, H, N, C, ...]` -> `[B, N*C, H, ...]`."""
    B, H, N, C = x.shape[:4]
    return jnp.moveaxis(x, 1, 3).reshape(B, N * C, H, *x.shape[4:])


def scan_chunk_states(decay, update, h0):
    """Chunk-level recurrence `S_{n+1} = decay_n * S_n + U_n`.

    decay: `[B, H, N, K]` (per key row) or `[B, H, N]` (scalar per head); update `[B, H, N, K, V]`.
    Returns (the state entering each chunk `[B, H, N, K, V]`, the final state `[B, H, K, V]`).
    This loop is the only sequential part of the chunked form; everything else is batched matmuls.
    """
    if decay.ndim == 3:
        decay = decay[..., None]

    def step(S, x):
        d, u = x
        return d[..., None] * S + u, S

    final, states = lax.scan(step, h0, (jnp.moveaxis(decay, 2, 0), jnp.moveaxis(update, 2, 0)))
    return jnp.moveaxis(states, 0, 2), final


def _intra_chunk_gla(q, k, v, G):
    """Causal attention inside each chunk with per-channel gates, all exponents <= 0.

    q, k, G: `[B, H, N, C, K]`, v: `[B, H, N, C, V]`. Rows are split into sub-chunks of
    SUB_CHUNK: pairs inside one sub-chunk get their gate products exactly (a `[c, c, K]` tensor);
    a later sub-chunk i sees an earlier j through a matmul of q_i exp(G_i - G_first(i)) and
    k_j exp(G_last(j) - G_j), joined by exp(G_first(i) - G_last(j)).
    """
    B, H, N, C, K = q.shape
    c = min(SUB_CHUNK, C)
    M = C // c
    split = lambda x: x.reshape(B, H, N, M, c, x.shape[-1])  # noqa: E731
    qs, ks, vs, Gs = split(q), split(k), split(v), split(G)

    causal = jnp.tril(jnp.ones((c, c), bool))
    diff = Gs[..., :, None, :] - Gs[..., None, :, :]  # [B,H,N,M,c,c,K]
    diff = jnp.where(causal[..., None], diff, 0.0)  # mask before exp: no inf, no NaN gradient
    A_diag = _einsum("...ik,...jk,...ijk->...ij", qs, ks, jnp.exp(diff)) * causal
    o = _einsum("...ij,...jv->...iv", A_diag, vs)

    if M > 1:
        G_first, G_last = Gs[..., 0, :], Gs[..., -1, :]  # [B,H,N,M,K]
        q_g = qs * jnp.exp(Gs - G_first[..., None, :])
        k_g = ks * jnp.exp(G_last[..., None, :] - Gs)
        earlier = jnp.tril(jnp.ones((M, M), bool), k=-1)  # sub-chunk j strictly before i
        gap = G_first[..., :, None, :] - G_last[..., None, :, :]  # [B,H,N,M(i),M(j),K]
        gap = jnp.exp(jnp.where(earlier[..., None], gap, 0.0)) * earlier[..., None]
        A_off = _einsum("...ick,...ijk,...jdk->...ijcd", q_g, gap, k_g)
        o = o + _einsum("...ijcd,...jdv->...icv", A_off, vs)
    return o.reshape(B, H, N, C, -1)


def chunk_gla(q, k, v, g, *, scale, initial_state=None, chunk_size=64):
    """Chunked GLA in pure JAX (FLA's `chunk_gla` algorithm without the kernels).

    Per chunk with in-chunk cumulative gates G and entering state S_n:
    `o = scale * [(q * exp G) S_n + intra-chunk causal attention]`,
    `S_{n+1} = diag(exp G_last) S_n + (k * exp(G_last - G))^T v`.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    qc, kc, vc, gc = (to_chunks(pad_time(x, C), C, cd) for x in (q, k, v, g))
    G = jnp.cumsum(gc, axis=3)
    G_last = G[..., -1:, :]  # [B,H,N,1,K]

    update = _einsum("bhnck,bhncv->bhnkv", kc * jnp.exp(G_last - G), vc)
    h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
    states, final = scan_chunk_states(jnp.exp(G_last[..., 0, :]), update, h0)

    o = _einsum("bhnck,bhnkv->bhncv", qc * jnp.exp(G), states) + _intra_chunk_gla(qc, kc, vc, G)
    o = from_chunks(o * scale)[:, :T]
    return o.astype(q.dtype), final
