"""Chunked GLA forward in one kernel: the state scan and every chunk's output together.

Grid (V/BV, B*H), BV = `BlockSizes.block_v_fused`. One program owns a `[K, BV]` float32 state
tile of one (b, h) and walks its NT chunks in order. Per chunk n, with G the in-chunk cumulative
gates, G_last their sum and S_n the state entering the chunk:

    o   = scale * [(q * exp G) @ S_n + tril(A) @ v],   A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)
    S_{n+1} = diag(exp G_last) S_n + (k * exp(G_last - G))^T v

with the same intra-chunk paths (one masked matmul of gate-scaled q and k while the chunk's decay
span is within `span_limit`, the exact per-pair loop beyond it) and the same state weights as the
two-kernel forward (chunk_fwd.py, chunk_state.py), so the two agree to rounding. The states
never leave registers unless the backward needs them (`save_states`: hs `[B, H, NT, K, V]` in the
input dtype, as the state scan writes them).

Against the two kernels this reads q, k, g once per V tile and writes no states in the primal,
but the chunks of one (b, h) run in sequence: B*H*V/BV programs in all (128 at B=4, H=16, V=128,
BV=64: about one per SM of an H100), each recomputing the chunk's scores A for its V tile.
Triton's software pipelining (`num_stages_fused`) loads the next chunk while this one computes:
the loads do not depend on the state.

Packed documents (static `packing`), as in chunk_state.py: "segments" (`starts [B, Tp]`): rows
pair only within their document, rows before the chunk's first start read S_n, rows after its
last start alone reach S_{n+1}, and a chunk holding a start passes no decayed state across it;
"documents" (B = 1, chunk-aligned; per chunk `first`, `last` flags and `docs` indices): a
document's first chunk enters with `h0[doc]`, its last chunk's end state is `ht[doc]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gla.common import (
    F32,
    causal_mask,
    choose,
    chunk_gates,
    itemsize,
    mm,
    operand_dtype,
    pair_decay,
    row_ids,
    scalar_at,
    split_bh,
    suffix_sums,
    use_matmul_path,
    vtile_specs,
)
from pallas_kernels.gla.config import BlockSizes


def _fused_kernel(q_ref, k_ref, v_ref, g_ref, h0_ref, *refs, chunk, scale, span_limit,
                  dot_dtype, precision, packing, save_states):
    # q, k, g: [Tp, K]; v, o: [Tp, BV]; h0, ht: [K, BV] ([N, K, BV] for "documents");
    # hs: [NT, K, BV]; starts: [Tp]; first, last, docs: [NT].
    refs = list(refs)
    starts_ref = refs.pop(0) if packing == "segments" else None
    if packing == "documents":
        first_ref, last_ref, docs_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    o_ref, ht_ref, *hs_ref = refs
    C = chunk
    NT = q_ref.shape[0] // C
    segments = packing == "segments"
    dot = functools.partial(mm, dtype=dot_dtype, precision=precision)

    def body(n, s):
        if packing == "documents":
            doc = scalar_at(docs_ref, n)
            s = lax.cond(scalar_at(first_ref, n) > 0, lambda: h0_ref[doc].astype(F32),
                         lambda: s)
        if save_states:
            hs_ref[0][n] = s.astype(hs_ref[0].dtype)
        rows = pl.ds(pl.multiple_of(n * C, C), C)
        g = g_ref[rows, :].astype(F32)
        G, GL = chunk_gates(g)  # [C, K], [1, K]
        q = q_ref[rows, :].astype(F32)
        k = k_ref[rows, :].astype(F32)
        v = v_ref[rows, :]
        if segments:  # e_t: the starts up to row t
            e_vec = jnp.cumsum(starts_ref[rows])
            e, e_last = e_vec[:, None], jnp.max(e_vec)

        q_inter = q * jnp.exp(G)
        if segments:
            q_inter = jnp.where(e == 0, q_inter, 0.0)
        inter = dot(q_inter, s, split=1)  # [C, BV]; s rounds to the operand dtype

        def matmul_path():
            half = 0.5 * GL
            A = dot(q * jnp.exp(G - half), k * jnp.exp(half - G), trans_b=True, split=1)
            pairs = causal_mask(C)
            if segments:
                pairs = pairs & (e == e_vec[None, :])
            return dot(jnp.where(pairs, A, 0.0), v, split=1)

        def exact_path():
            ids = row_ids(C)

            def column(j, acc):  # acc += A[:, j] v_j
                kj = k_ref[pl.ds(rows.start + j, 1), :].astype(F32)
                a = jnp.sum(q * kj * pair_decay(g, ids, j), axis=1, keepdims=True)
                if segments:  # rows in row j's document
                    at_j = lax.broadcasted_iota(jnp.int32, (C,), 0) == j
                    a = jnp.where(e == jnp.sum(jnp.where(at_j, e_vec, 0.0)), a, 0.0)
                return acc + a * v_ref[pl.ds(rows.start + j, 1), :].astype(F32)

            return lax.fori_loop(0, C, column, jnp.zeros(inter.shape, F32))

        matmul = functools.partial(use_matmul_path, GL, span_limit)
        intra = choose(matmul, span_limit, matmul_path, exact_path)
        o_ref[rows, :] = (scale * (inter + intra)).astype(o_ref.dtype)

        # exp(G_last - G): exact suffix sums only where the span exceeds the matmul-path limit.
        w = k * jnp.exp(choose(matmul, span_limit, lambda: GL - G, lambda: suffix_sums(g)))
        decay = jnp.exp(jnp.sum(g, axis=0))[:, None]  # [K, 1]
        if segments:
            w = jnp.where(e == e_last, w, 0.0)
            decay = jnp.where(e_last == 0, decay, 0.0)
        s = s * decay + dot(w, v, trans_a=True, split=1)
        if packing == "documents":
            @pl.when(scalar_at(last_ref, n) > 0)
            def _():
                ht_ref[doc] = s

        return s

    if packing == "documents":
        lax.fori_loop(0, NT, body, jnp.zeros(ht_ref.shape[1:], F32))
    else:
        ht_ref[...] = lax.fori_loop(0, NT, body, h0_ref[...].astype(F32))


def fused_fwd(q, k, v, g, h0, *, scale: float, block_sizes: BlockSizes, interpret: bool,
              packed=None, save_states: bool = True):
    """Forward on padded inputs (Tp % chunk == 0, K and V powers of two), one kernel.

    packed: None, `("segments", starts [B, Tp])` or `("documents", (first, last, docs))` (`[NT]`
    each, B = 1; h0 and the final state are then `[N, H, K, V]`).
    Returns (o `[B, Tp, H, V]` in q's dtype, final state float32, chunk states hs
    `[B, H, NT, K, V]` in q's dtype, or None without `save_states`), as `chunk_fwd`.
    """
    bs = block_sizes
    B, Tp, H, K = q.shape
    V = v.shape[-1]
    C, BV = bs.chunk, bs.block_v_fused
    NT, NV = Tp // C, V // BV
    dot_dtype, precision = operand_dtype(q.dtype)
    packing, flags = (None, ()) if packed is None else packed
    flags = tuple(flags) if packing == "documents" else (() if packing is None else (flags,))
    k_spec, v_spec, s_spec, _, f_specs = vtile_specs(Tp, H, K, BV, packing, h0.shape[0], NT)

    def hs_map(vv, i):
        b, h = split_bh(i, H)
        return b, h, 0, 0, vv

    out_specs = [v_spec, s_spec]
    out_shape = [jax.ShapeDtypeStruct(v.shape, q.dtype), jax.ShapeDtypeStruct(h0.shape, F32)]
    if save_states:
        out_specs.append(pl.BlockSpec((None, None, NT, K, BV), hs_map))
        out_shape.append(jax.ShapeDtypeStruct((B, H, NT, K, V), q.dtype))
    # Per head: the output kernel's FLOPs (scores per V tile, A v, the inter-chunk term, gates,
    # mask and output), the state update 2*T*K*V + 2*NT*K*V and its weights 5*T*K per V tile
    # (jaxla.flops.kernels; bytes: every array once per V tile it is read in).
    cost = pl.CostEstimate(
        flops=int(B * H * (NV * 2 * Tp * C * K + 2 * Tp * C * V + 4 * Tp * K * V
                           + 2 * NT * K * V + NV * (13 * Tp * K + Tp * C) + 2 * Tp * V)),
        transcendentals=int(B * H * NV * 4 * Tp * K),
        bytes_accessed=int(NV * (2 * q.size * itemsize(q.dtype) + g.size * 4)
                           + 2 * v.size * itemsize(v.dtype) + 2 * h0.size * 4
                           + (B * H * NT * K * V * itemsize(q.dtype) if save_states else 0)),
    )
    kernel = functools.partial(
        _fused_kernel, chunk=C, scale=scale, span_limit=bs.span_limit_for(q.dtype),
        dot_dtype=dot_dtype, precision=precision, packing=packing, save_states=save_states)
    o, ht, *hs = pl.pallas_call(
        kernel,
        grid=(NV, B * H),
        in_specs=[k_spec, k_spec, v_spec, k_spec, s_spec, *f_specs],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=bs.num_warps_fused,
                                                num_stages=bs.num_stages_fused),
        cost_estimate=cost,
        interpret=interpret,
        name="gla_chunk_fwd_fused",
    )(q, k, v, g, h0, *flags)
    return o, ht, (hs[0] if save_states else None)
