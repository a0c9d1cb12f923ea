"""Pure-JAX Gated Linear Attention: the step-by-step spec and the chunked XLA form.

Both take validated inputs (see `jaxla.ops.gla`): q, k, g `[B, T, H, K]`, v `[B, T, H, V]`,
log-decays g <= 0, state `[B, H, K, V]`, and an optional `Packing` (`jaxla.ops.packing`; with
per-document states, initial and final states are `[N, H, K, V]`). They compute in float32
(float64 for float64 inputs) and return `(o [B, T, H, V] in q.dtype, final_state float32/64)`.

Recurrence: `S_t = diag(exp g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`; at a document
start `S_{t-1}` is replaced by zero (segment_ids) or by the document's initial state (cu_seqlens).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxla.ops import packing as pk
from jaxla.ops._checks import compute_dtype

HIGHEST = lax.Precision.HIGHEST
SUB_CHUNK = 16  # rows whose pairwise gate products are formed exactly (FLA's secondary chunking)


def _einsum(spec, *xs):
    return jnp.einsum(spec, *xs, precision=HIGHEST)


def naive_gla(q, k, v, g, *, scale, initial_state=None, packing=None):
    """The spec: a `lax.scan` over time, one rank-1 state update per step."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    time_major = [jnp.moveaxis(x.astype(cd), 1, 0) for x in (q, k, v, g)]

    def update(h, x):
        q_t, k_t, v_t, g_t = x
        h = h * jnp.exp(g_t)[..., None] + k_t[..., :, None] * v_t[..., None, :]
        return h, _einsum("bhk,bhkv->bhv", q_t * scale, h)

    if packing is not None and packing.per_document_states:
        N = packing.num_docs
        s0 = (jnp.zeros((N, H, K, V), cd) if initial_state is None
              else initial_state.astype(cd))
        starts, ends = pk.starts_and_ends(packing.docs)

        def step(carry, x):
            h, finals = carry
            doc, start, end, *x = x
            h = jnp.where(start, s0[doc][None], h)
            h, o_t = update(h, x)
            finals = finals.at[doc].set(jnp.where(end, h[0], finals[doc]))
            return (h, finals), o_t

        init = (jnp.zeros((B, H, K, V), cd), jnp.zeros((N, H, K, V), cd))
        (_, final), o = lax.scan(step, init, (packing.docs, starts, ends, *time_major))
    elif packing is not None:
        h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)

        def step(h, x):
            reset, *x = x
            return update(jnp.where(reset[:, None, None, None], 0.0, h), x)

        final, o = lax.scan(step, h0, (jnp.moveaxis(packing.resets, 1, 0), *time_major))
    else:
        h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
        final, o = lax.scan(update, h0, time_major)
    return jnp.moveaxis(o, 0, 1).astype(q.dtype), final


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


def chunk_segments(resets, chunk_size: int):
    """`[B, T]` document starts -> `e [B, 1, N, C]` int32: starts in the chunk up to each row.

    Rows i, j of a chunk lie in one document iff `e_i == e_j`; row i reads the state entering the
    chunk iff `e_i == 0`; row j reaches the chunk's end state iff `e_j == e_last`.
    """
    r = pad_time(resets.astype(jnp.int32), chunk_size)
    B, Tp = r.shape
    return jnp.cumsum(r.reshape(B, 1, Tp // chunk_size, chunk_size), axis=-1)


def scan_chunk_states(decay, update, h0, *, chunk_docs=None, initial_states=None):
    """Chunk-level recurrence `S_{n+1} = decay_n * S_n + U_n`.

    decay: `[B, H, N, K]` (per key row) or `[B, H, N]` (scalar per head); update `[B, H, N, K, V]`.
    Returns (the state entering each chunk `[B, H, N, K, V]`, the final state `[B, H, K, V]`).
    With `chunk_docs` (`[N]`, documents aligned to chunks, B = 1; `jaxla.ops.packing.align`) a
    document's first chunk enters with its row of `initial_states [D, H, K, V]` and the final
    state is `[D, H, K, V]`, each document's state after its last chunk.
    This loop is the only sequential part of the chunked form; everything else is batched matmuls.
    """
    if decay.ndim == 3:
        decay = decay[..., None]
    xs = (jnp.moveaxis(decay, 2, 0), jnp.moveaxis(update, 2, 0))
    if chunk_docs is None:
        def step(S, x):
            d, u = x
            return d[..., None] * S + u, S

        final, states = lax.scan(step, h0, xs)
        return jnp.moveaxis(states, 0, 2), final

    starts, ends = pk.chunk_edges(chunk_docs)
    num_docs = initial_states.shape[0]

    def step_doc(S, x):
        d, u, doc, start = x
        S = jnp.where(start, initial_states[jnp.maximum(doc, 0)][None], S)
        S_next = d[..., None] * S + u
        return S_next, (S, S_next)

    _, (states, leaving) = lax.scan(step_doc, h0, (*xs, chunk_docs, starts))
    last = jnp.where(ends, chunk_docs, num_docs)  # out of range for other chunks: dropped
    final = jnp.zeros_like(initial_states).at[last].set(leaving[:, 0], mode="drop")
    return jnp.moveaxis(states, 0, 2), final


def per_document(core, xs, initial_state, packing, chunk_size: int, state_shape):
    """Run a chunked `core` on documents aligned to chunk boundaries (cu_seqlens).

    `core(*aligned_xs, chunk_docs=, initial_states=)` returns `(o [1, Tp, ...], finals)`; the
    outputs are moved back to the original positions.
    """
    aligned = pk.align(packing.docs, packing.num_docs, chunk_size)
    s0 = initial_state
    if s0 is None:
        dtype = compute_dtype(*(x.dtype for x in xs))
        s0 = jnp.zeros((packing.num_docs, *state_shape), dtype)
    o, final = core(*(pk.to_aligned(x, aligned) for x in xs), chunk_docs=aligned.chunk_docs,
                    initial_states=s0)
    return pk.from_aligned(o, aligned), final


def _intra_chunk_gla(q, k, v, G, e=None):
    """Causal attention inside each chunk with per-channel gates, all exponents <= 0.

    q, k, G: `[B, H, N, C, K]`, v: `[B, H, N, C, V]`; e: optional `[B, 1, N, C]` document
    positions (`chunk_segments`): pairs in different documents are masked out. Rows are split
    into sub-chunks of SUB_CHUNK: pairs inside one sub-chunk get their gate products exactly
    (a `[c, c, K]` tensor); a later sub-chunk i sees an earlier j through a matmul of
    q_i exp(G_i - G_first(i)) and k_j exp(G_last(j) - G_j), joined by exp(G_first(i) - G_last(j)).
    """
    B, H, N, C, K = q.shape
    c = min(SUB_CHUNK, C)
    M = C // c
    split = lambda x: x.reshape(B, H, N, M, c, x.shape[-1])  # noqa: E731
    qs, ks, vs, Gs = split(q), split(k), split(v), split(G)
    es = None if e is None else e.reshape(e.shape[0], 1, N, M, c)

    causal = jnp.tril(jnp.ones((c, c), bool))
    diff = Gs[..., :, None, :] - Gs[..., None, :, :]  # [B,H,N,M,c,c,K]
    diff = jnp.where(causal[..., None], diff, 0.0)  # mask before exp: no inf, no NaN gradient
    A_diag = _einsum("...ik,...jk,...ijk->...ij", qs, ks, jnp.exp(diff)) * causal
    if es is not None:
        A_diag = A_diag * (es[..., :, None] == es[..., None, :])
    o = _einsum("...ij,...jv->...iv", A_diag, vs)

    if M > 1:
        G_first, G_last = Gs[..., 0, :], Gs[..., -1, :]  # [B,H,N,M,K]
        q_g = qs * jnp.exp(Gs - G_first[..., None, :])
        k_g = ks * jnp.exp(G_last[..., None, :] - Gs)
        earlier = jnp.tril(jnp.ones((M, M), bool), k=-1)  # sub-chunk j strictly before i
        gap = G_first[..., :, None, :] - G_last[..., None, :, :]  # [B,H,N,M(i),M(j),K]
        gap = jnp.exp(jnp.where(earlier[..., None], gap, 0.0)) * earlier[..., None]
        A_off = _einsum("...ick,...ijk,...jdk->...ijcd", q_g, gap, k_g)
        if es is not None:
            A_off = A_off * (es[..., :, None, :, None] == es[..., None, :, None, :])
        o = o + _einsum("...ijcd,...jdv->...icv", A_off, vs)
    return o.reshape(B, H, N, C, -1)


def chunk_gla(q, k, v, g, *, scale, initial_state=None, chunk_size=64, packing=None):
    """Chunked GLA in pure JAX (FLA's `chunk_gla` algorithm without the kernels).

    Per chunk with in-chunk cumulative gates G and entering state S_n:
    `o = scale * [(q * exp G) S_n + intra-chunk causal attention]`,
    `S_{n+1} = diag(exp G_last) S_n + (k * exp(G_last - G))^T v`.
    Documents (segment_ids) mask the pairs across a start and the terms reaching past it;
    per-document states (cu_seqlens) run on documents aligned to chunks (`per_document`).
    """
    if packing is not None and packing.per_document_states:
        core = lambda *xs, **kw: _chunk_gla(*xs, scale=scale, chunk_size=chunk_size, **kw)  # noqa: E731
        H, K, V = q.shape[2], q.shape[3], v.shape[3]
        return per_document(core, (q, k, v, g), initial_state, packing, chunk_size, (H, K, V))
    return _chunk_gla(q, k, v, g, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                      resets=None if packing is None else packing.resets)


def _chunk_gla(q, k, v, g, *, scale, chunk_size, initial_state=None, resets=None,
               chunk_docs=None, initial_states=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    cd = compute_dtype(q.dtype, g.dtype, None if initial_state is None else initial_state.dtype)
    qc, kc, vc, gc = (to_chunks(pad_time(x, C), C, cd) for x in (q, k, v, g))
    G = jnp.cumsum(gc, axis=3)
    G_last = G[..., -1:, :]  # [B,H,N,1,K]
    w_update, w_inter, decay = jnp.exp(G_last - G), jnp.exp(G), jnp.exp(G_last[..., 0, :])
    e = None
    if resets is not None:
        e = chunk_segments(resets, C)
        w_inter = w_inter * (e == 0)[..., None]
        w_update = w_update * (e == e[..., -1:])[..., None]
        decay = decay * (e[..., -1] == 0)[..., None]

    update = _einsum("bhnck,bhncv->bhnkv", kc * w_update, vc)
    h0 = jnp.zeros((B, H, K, V), cd) if initial_state is None else initial_state.astype(cd)
    if initial_states is not None:
        initial_states = initial_states.astype(cd)
    states, final = scan_chunk_states(decay, update, h0, chunk_docs=chunk_docs,
                                      initial_states=initial_states)

    o = _einsum("bhnck,bhnkv->bhncv", qc * w_inter, states) + _intra_chunk_gla(qc, kc, vc, G, e)
    o = from_chunks(o * scale)[:, :T]
    return o.astype(q.dtype), final
