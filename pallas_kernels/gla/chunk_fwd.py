"""Chunked GLA forward: chunk states, then every chunk's output in parallel.

Two kernels, with the chunk states materialised in HBM (FLA's scheme):

1. `state_scan` (chunk_state.py), grid (K/BK, V/BV, B*H) for the `[BK, BV]` state tile
   (`BlockSizes.block_k_state` x `block_v_state`, 16 x min(V, 128) by default): each
   program carries its float32 tile through the NT chunks of one (b, h) in order and writes the
   state entering every chunk, hs `[B, H, NT, K, V]`, in the input dtype (they are matmul
   operands of the second kernel).
2. `_output_kernel`, grid (V/BV, NT/P, B*H): independent programs of P chunks each
   (`chunks_per_program_fwd`). Per chunk, with G the in-chunk cumulative gates (float32) and S_n
   the state entering it:
   `o = scale * [(q * exp G) @ S_n + tril(A) @ v]`, `A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)`,
   walking K in tiles of `block_k` (A and the inter-chunk term accumulate over the tiles, so only
   a few `[C, block_k]` float32 tiles are live at once).

The fused alternative, one program per (b, h, V tile) carrying the state through all chunks,
has only B*H*V/BV sequential programs (fewer than the SMs of an H100 at the benchmark shape) and
recomputes the intra-chunk attention for every V tile.

Intra-chunk attention without per-pair exponentials. Any per-channel reference r factorises
exp(G_i - G_j) = exp(G_i - r) * exp(r - G_j). With r = G_last / 2 both factors are bounded by
exp(span / 2), span = -G_last >= 0 (G runs from ~0 down to G_last inside a chunk), so when the span
is at most `span_limit` (60: factors within e^+-30) the whole causal score matrix is ONE matmul
`(q * exp(G - r)) @ (k * exp(r - G))^T`, masked. Masked (acausal) entries may be huge, but
`where` discards them; causal entries are sums of terms <= |q_ik k_jk|, each formed
with ordinary operand rounding. This replaces FLA's 16-row sub-chunks and their exact fp32 diagonal
blocks (C*16*K exponentials per chunk) with 2*C*K exponentials. With FLA's gates
(`logsigmoid(x) / 16`) a 64-row chunk spans ~3, so the matmul path is the rule; chunks whose span
exceeds the limit (log-decay below ~-0.9 per step on average in some channel) take the exact path:
a loop over the C key rows with per-pair exponents, all <= 0 (`pair_decay`), correct down to a
log-decay of -inf per step, ~C/2 times more exponentials. The choice is per chunk, at run time.

bfloat16 inputs: bfloat16 matmul operands, float32 accumulation. The gate-scaled q (both terms)
and the masked scores are split into hi + lo bfloat16 halves (`common.mm`, two dots); the
gate-scaled k and the stored states are rounded to bfloat16. Byte and FLOP budgets, timings and
the registers Triton gives these kernels: benchmarks/RESULTS.md, "Kernel design notes".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gla.chunk_state import state_scan
from pallas_kernels.gla.common import (
    F32,
    causal_mask,
    choose,
    chunk_gates,
    fold_tiles,
    for_each_chunk,
    itemsize,
    mm,
    operand_dtype,
    pair_decay,
    row_ids,
    split_bh,
    starts_spec,
    use_matmul_path,
)
from pallas_kernels.gla.common import (
    chunks_per_program as per_program,
)
from pallas_kernels.gla.config import BlockSizes


def _output_kernel(q_ref, k_ref, v_ref, g_ref, h_ref, *refs, chunk, block_k, scale,
                   span_limit, dot_dtype, precision, segments):
    # q, k, g: [P*C, K]; v, o: [P*C, BV]; h: [P, K, BV] (the state entering each of the P chunks);
    # starts (segments): [P*C]. K is walked in tiles of block_k so that few [C, block_k] float32
    # tiles are live at once.
    starts_ref, o_ref = refs if segments else (None, *refs)
    C, K = chunk, q_ref.shape[1]
    BV = v_ref.shape[1]
    nk = K // block_k
    dot = functools.partial(mm, dtype=dot_dtype, precision=precision)

    def one_chunk(rows, p):
        GL_all = jnp.sum(g_ref[rows, :].astype(F32), axis=0, keepdims=True)
        # Documents: rows i, j pair only within one (e_i == e_j); row i reads the entering
        # state only before the chunk's first start (e_i == 0).
        if segments:
            e_vec = jnp.cumsum(starts_ref[rows])
            e, e_row = e_vec[:, None], e_vec[None, :]

        def load(cols):
            g = g_ref[rows, cols].astype(F32)
            G, GL = chunk_gates(g)
            return g, G, GL, q_ref[rows, cols].astype(F32)

        def inter_tile(cols, q, G):  # (q * exp G) @ S_n over this K tile
            qG = q * jnp.exp(G)
            if segments:
                qG = jnp.where(e == 0, qG, 0.0)
            return dot(qG, h_ref[p, cols, :], split=1)

        def matmul_path():
            def tile(cols, carry):
                inter, A = carry
                g, G, GL, q = load(cols)
                half = 0.5 * GL
                qf = q * jnp.exp(G - half)
                kf = k_ref[rows, cols].astype(F32) * jnp.exp(half - G)
                return (inter + inter_tile(cols, q, G),
                        A + dot(qf, kf, trans_b=True, split=1))

            init = (jnp.zeros((C, BV), F32), jnp.zeros((C, C), F32))
            inter, A = fold_tiles(nk, block_k, tile, init)
            pairs = causal_mask(C)
            if segments:
                pairs = pairs & (e == e_row)
            return inter + dot(jnp.where(pairs, A, 0.0), v_ref[rows, :], split=1)

        def exact_path():
            def tile(cols, inter):
                g, G, GL, q = load(cols)
                return inter + inter_tile(cols, q, G)

            inter = fold_tiles(nk, block_k, tile, jnp.zeros((C, BV), F32))
            ids = row_ids(C)

            def column(j, acc):  # acc += A[:, j] v_j, A[:, j] summed over the K tiles
                def a_tile(cols, a):
                    g, _, _, q = load(cols)
                    kj = k_ref[pl.ds(rows.start + j, 1), cols].astype(F32)
                    return a + jnp.sum(q * kj * pair_decay(g, ids, j), axis=1, keepdims=True)

                a = fold_tiles(nk, block_k, a_tile, jnp.zeros((C, 1), F32))
                if segments:  # rows in row j's document
                    at_j = lax.broadcasted_iota(jnp.int32, (C,), 0) == j
                    a = jnp.where(e == jnp.sum(jnp.where(at_j, e_vec, 0.0)), a, 0.0)
                return acc + a * v_ref[pl.ds(rows.start + j, 1), :].astype(F32)

            return inter + lax.fori_loop(0, C, column, jnp.zeros((C, BV), F32))

        o = choose(lambda: use_matmul_path(GL_all, span_limit), span_limit, matmul_path,
                   exact_path)
        o_ref[rows, :] = (scale * o).astype(o_ref.dtype)

    for_each_chunk(h_ref.shape[0], C, one_chunk)


def chunk_output(q, k, v, g, hs, *, scale: float, chunk: int, block_k: int, block_v: int,
                 span_limit: float, chunks_per_program: int, num_warps: int, num_stages: int,
                 interpret: bool, starts=None):
    """o `[B, Tp, H, V]` from padded inputs and the chunk states hs `[B, H, NT, K, V]`;
    `starts [B, Tp]` float32 marks document starts (segment_ids)."""
    B, Tp, H, K = q.shape
    V = v.shape[-1]
    NT, NV = Tp // chunk, V // block_v
    P = per_program(chunks_per_program, NT)
    dot_dtype, precision = operand_dtype(q.dtype)

    def kmap(vv, n, i):
        b, h = split_bh(i, H)
        return b, n, h, 0

    def vmap_(vv, n, i):
        b, h = split_bh(i, H)
        return b, n, h, vv

    def hmap(vv, n, i):
        b, h = split_bh(i, H)
        return b, h, n, 0, vv

    k_spec = pl.BlockSpec((None, P * chunk, None, K), kmap)
    v_spec = pl.BlockSpec((None, P * chunk, None, block_v), vmap_)
    h_spec = pl.BlockSpec((None, None, P, K, block_v), hmap)
    # Per head: scores 2*T*C*K per V tile, A v 2*T*C*V, inter output 2*T*K*V (each matmul once:
    # 16-bit inputs run 2 dots per matmul for accuracy, see common.mm), gates and scaled q, k
    # 8*T*K and the mask T*C per V tile, the output's sum and scale 2*T*V (jaxla.flops.kernels;
    # bytes: every array once).
    cost = pl.CostEstimate(
        flops=int(B * H * (NV * 2 * Tp * chunk * K + 2 * Tp * chunk * V + 2 * Tp * K * V
                           + NV * (8 * Tp * K + Tp * chunk) + 2 * Tp * V)),
        transcendentals=int(B * H * NV * 3 * Tp * K),
        bytes_accessed=int(2 * q.size * itemsize(q.dtype) + g.size * 4
                           + v.size * itemsize(v.dtype) + hs.size * itemsize(hs.dtype)
                           + B * Tp * H * V * itemsize(q.dtype)),
    )
    kernel = functools.partial(_output_kernel, chunk=chunk, block_k=min(block_k, K), scale=scale,
                               span_limit=span_limit, dot_dtype=dot_dtype, precision=precision,
                               segments=starts is not None)
    in_specs, args = [k_spec, k_spec, v_spec, k_spec, h_spec], [q, k, v, g, hs]
    if starts is not None:
        in_specs.append(starts_spec(P * chunk, H))
        args.append(starts)
    return pl.pallas_call(
        kernel,
        grid=(NV, NT // P, B * H),
        in_specs=in_specs,
        out_specs=v_spec,
        out_shape=jax.ShapeDtypeStruct((B, Tp, H, V), q.dtype),
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        cost_estimate=cost,
        interpret=interpret,
        name="gla_chunk_fwd_output",
    )(*args)


def chunk_fwd(q, k, v, g, h0, *, scale: float, block_sizes: BlockSizes, interpret: bool,
              packed=None):
    """Forward on padded inputs (Tp % chunk == 0, K and V powers of two).

    packed: None, `("segments", starts)` or `("documents", chunk flags)` (chunk_state.py).
    Returns (o `[B, Tp, H, V]`, final state `[B, H, K, V]` float32 (`[N, H, K, V]` for
    documents), chunk states hs).
    """
    bs = block_sizes
    span_limit = bs.span_limit_for(q.dtype)
    hs, ht = state_scan(
        k, v, g, h0, chunk=bs.chunk, reverse=False, scale=1.0, block_k=bs.block_k_state,
        block_v=bs.block_v_state, num_warps=bs.num_warps_state, num_stages=bs.num_stages_state,
        interpret=interpret, name="gla_chunk_fwd_states", span_limit=span_limit,
        packed=packed,
    )
    o = chunk_output(
        q, k, v, g, hs, scale=scale, chunk=bs.chunk, block_k=bs.block_k, block_v=bs.block_v,
        span_limit=span_limit, chunks_per_program=bs.chunks_per_program_fwd,
        num_warps=bs.num_warps_fwd, num_stages=bs.num_stages_fwd, interpret=interpret,
        starts=packed[1] if packed is not None and packed[0] == "segments" else None,
    )
    return o, ht, hs
