"""Chunked GLA backward: state gradients by a reverse chunk scan, then all gradients per chunk.

The forward's chunk states hs (input dtype) are kept as a residual instead of being recomputed:
they were written anyway, and recomputing them costs a full pass over k, g, v.

1. `state_scan(reverse=True)` (chunk_state.py): dS_n, the gradient of the state leaving chunk n,
   for all n, by `dS_{n-1} = diag(exp G_last) dS_n + (scale q exp G)^T do`, starting from the
   final-state cotangent; the last step gives d initial_state. Same grid and tiles as the
   forward's state scan; writes dhs in the input dtype.
2. `_grad_kernel`: grid (V/BV, NT, B*H), one chunk per program, everything in one pass:
     A = causal(scale q_i k_j exp(G_i - G_j)),  dA = causal(scale do v^T)
     dv = A^T do + (k exp(G_last - G)) dS_n
     dq = [dA (k exp(-G))] exp(G) + scale (do S_n^T) exp(G)           (intra via the factorisation)
     dk = [dA^T (q exp(G))] exp(-G) + (v dS_n^T) exp(G_last - G)
     dg = revcumsum_chunk(q dq - k dk) + exp(G_last) rowsum(S_n * dS_n) + sum_t k_t dk_inter_t
   The last line is the closed form of the gate gradient: d/dG_t of the loss is q_t dq_t - k_t dk_t,
   g's gradient is its reverse cumsum over the whole sequence, and the part that comes from later
   chunks equals rowsum(S_end * dS_end) of this chunk's end state, which the forward recurrence
   `S_end = diag(exp G_last) S_n + (k exp(G_last - G))^T v` expands into the two last terms.
   The intra-chunk terms use the same matmul / exact split as the forward (see chunk_fwd.py).
   K is walked twice in tiles of `block_k`: first accumulating A (a contraction over K) and dv,
   then computing and storing dq, dk, dg tile by tile (they are per channel); the second pass
   re-reads q, k, g from L1/L2, not HBM, and keeps few `[C, block_k]` float32 tiles live (the
   whole-K version spilled registers at every launch configuration).
With V tiles (block_v < V) dq, dk and dg are sums over the tiles: each program writes float32
partials and XLA adds them. One chunk per gradient program (`chunks_per_program_bwd` = 1) is
enforced: 2 gave wrong gradients on an H100 although interpret mode agrees (config.py).
Byte and FLOP budgets and timings: benchmarks/RESULTS.md, "Kernel design notes".
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
    masked_sums,
    mm,
    operand_dtype,
    pair_decay,
    row_ids,
    split_bh,
    starts_spec,
    suffix_sums,
    use_matmul_path,
)
from pallas_kernels.gla.common import (
    chunks_per_program as per_program,
)
from pallas_kernels.gla.config import BlockSizes


def _grad_kernel(q_ref, k_ref, v_ref, g_ref, do_ref, h_ref, dh_ref, *refs, chunk, block_k,
                 scale, span_limit, dot_dtype, precision, segments):
    # q, k, g, dq, dk, dg: [P*C, K]; v, do, dv: [P*C, BV]; h (state entering), dh (gradient of
    # the state leaving each chunk): [P, K, BV]; starts (segments): [P*C]. K is walked in tiles of
    # block_k twice: first to accumulate A (a contraction over K) and dv, then for dq, dk, dg,
    # which are per channel.
    refs = list(refs)
    starts_ref = refs.pop(0) if segments else None
    dq_ref, dk_ref, dv_ref, dg_ref = refs
    C, K = chunk, q_ref.shape[1]
    BV = v_ref.shape[1]
    nk = K // block_k
    dot = functools.partial(mm, dtype=dot_dtype, precision=precision)

    def one_chunk(rows, p):
        GL_all = jnp.sum(g_ref[rows, :].astype(F32), axis=0, keepdims=True)
        matmul = functools.partial(choose, lambda: use_matmul_path(GL_all, span_limit), span_limit)
        ids = row_ids(C)
        v = v_ref[rows, :]
        do = do_ref[rows, :]
        pairs = causal_mask(C)
        if segments:
            # Documents (see chunk_fwd.py): pairs within one, the entering state read by rows
            # with e == 0, the end state reached by rows with e == e_last.
            starts = starts_ref[rows]
            e = jnp.cumsum(starts)
            e_last = jnp.max(e)
            same = e[:, None] == e[None, :]
            pairs = pairs & same
            reads_entering, reaches_end = (e == 0)[:, None], (e == e_last)[:, None]

        def load(cols):
            g = g_ref[rows, cols].astype(F32)
            G, GL = chunk_gates(g)
            # exp(G_last - G): a difference of cumsums (error ~eps * span, fine within the
            # matmul-path limit) or, beyond it, the exact suffix sums (3 more small matmuls).
            S = matmul(lambda: GL - G, lambda: suffix_sums(g))
            eS = jnp.exp(S)
            if segments:
                eS = jnp.where(reaches_end, eS, 0.0)
            q = q_ref[rows, cols].astype(F32)
            return g, G, GL, eS, q, k_ref[rows, cols].astype(F32)

        def same_as(j):  # rows in row j's document, `[C, 1]`
            at_j = lax.broadcasted_iota(jnp.int32, (C,), 0) == j
            return e[:, None] == jnp.sum(jnp.where(at_j, e, 0.0))

        def row(ref, j, cols):
            return ref[pl.ds(rows.start + j, 1), cols].astype(F32)

        # Phase 1: dv = A^T do + (k exp(G_last - G)) dS_n.
        def dv_inter_tile(cols, k, eS):
            return dot(k * eS, dh_ref[p, cols, :], split=1)

        def dv_matmul():
            def tile(cols, carry):
                A, dv = carry
                _, G, GL, eS, q, k = load(cols)
                half = 0.5 * GL
                qf, kf = q * jnp.exp(G - half), k * jnp.exp(half - G)
                return A + dot(qf, kf, trans_b=True, split=1), dv + dv_inter_tile(cols, k, eS)

            A, dv = fold_tiles(nk, block_k, tile,
                               (jnp.zeros((C, C), F32), jnp.zeros((C, BV), F32)))
            return dv + dot(jnp.where(pairs, A, 0.0) * scale, do, trans_a=True, split=1)

        def dv_exact():
            def tile(cols, dv):
                _, _, _, eS, _, k = load(cols)
                return dv + dv_inter_tile(cols, k, eS)

            dv = fold_tiles(nk, block_k, tile, jnp.zeros((C, BV), F32))

            def column(j, dv):  # row j of dv += sum_i A_ij do_i, A[:, j] summed over K tiles
                def a_tile(cols, a):
                    g, _, _, _, q, _ = load(cols)
                    return a + jnp.sum(q * row(k_ref, j, cols) * pair_decay(g, ids, j), axis=1,
                                       keepdims=True)

                a = scale * fold_tiles(nk, block_k, a_tile, jnp.zeros((C, 1), F32))
                if segments:
                    a = jnp.where(same_as(j), a, 0.0)
                return dv + jnp.where(ids == j, jnp.sum(a * do.astype(F32), axis=0, keepdims=True),
                                      0.0)

            return lax.fori_loop(0, C, column, dv)

        dv_ref[rows, :] = matmul(dv_matmul, dv_exact).astype(dv_ref.dtype)

        # Phase 2: dq, dk, dg per K tile. Pairs i = j have exp(0) = 1: they add d_i k_i to dq_i
        # and d_i q_i to dk_i, d = diag(dA), and cancel exactly in q dq - k dk; the intra terms
        # leave them out (strictly causal) so dg does not carry their rounding.
        d = scale * jnp.sum(do.astype(F32) * v.astype(F32), axis=1, keepdims=True)
        strict = ids > lax.broadcasted_iota(jnp.int32, (C, C), 1)
        dA = jnp.where(strict & same if segments else strict,
                       dot(do, v, trans_b=True), 0.0) * scale

        def grad_tile(cols, carry):
            g, G, GL, eS, q, k = load(cols)

            def intra_matmul():
                half = 0.5 * GL
                eGr, erG = jnp.exp(G - half), jnp.exp(half - G)
                return (dot(dA, k * erG, split=2) * eGr,
                        dot(dA, q * eGr, trans_a=True, split=2) * erG)

            def intra_exact():
                def column(j, acc):
                    dq, dk = acc
                    E = pair_decay(g, ids, j)  # exp(G_i - G_j), rows i >= j
                    vj = v_ref[pl.ds(rows.start + j, 1), :].astype(F32)
                    later_row = (ids > j) & same_as(j) if segments else ids > j
                    da = jnp.where(later_row, scale * jnp.sum(do.astype(F32) * vj, axis=1,
                                                              keepdims=True), 0.0)  # dA[:, j]
                    dq = dq + da * row(k_ref, j, cols) * E
                    dk = dk + jnp.where(ids == j, jnp.sum(da * q * E, axis=0, keepdims=True), 0.0)
                    return dq, dk

                zeros = jnp.zeros((C, block_k), F32)
                return lax.fori_loop(0, C, column, (zeros, zeros))

            dq_intra, dk_intra = matmul(intra_matmul, intra_exact)
            h, dh = h_ref[p, cols, :], dh_ref[p, cols, :]
            dq_inter = dot(do, h, trans_b=True) * (scale * jnp.exp(G))
            if segments:
                dq_inter = jnp.where(reads_entering, dq_inter, 0.0)
            dq = dq_intra + dq_inter
            dk_inter = dot(v, dh, trans_b=True) * eS
            dk = dk_intra + dk_inter
            dB = q * dq - k * dk
            carried = jnp.exp(GL) * jnp.sum(h.astype(F32) * dh.astype(F32), axis=1)[None, :]
            if segments:  # the entering state reaches the end only through a chunk with no start
                carried = jnp.where(e_last == 0, carried, 0.0)
            later = carried + jnp.sum(k * dk_inter, axis=0, keepdims=True)
            if segments:
                # The reverse cumsum runs within each document; the part beyond the chunk
                # reaches its last document only; a document's first gate decays a zero state.
                later_in_doc = same & (lax.broadcasted_iota(jnp.int32, (C, C), 1) >= ids)
                dg = masked_sums(later_in_doc, dB) + jnp.where(reaches_end, later, 0.0)
                dg = jnp.where((starts > 0)[:, None], 0.0, dg)
            else:
                dg = jnp.sum(dB, axis=0, keepdims=True) - jnp.cumsum(dB, axis=0) + dB + later
            dq_ref[rows, cols] = (dq + d * k).astype(dq_ref.dtype)
            dk_ref[rows, cols] = (dk + d * q).astype(dk_ref.dtype)
            dg_ref[rows, cols] = dg.astype(dg_ref.dtype)
            return carry

        fold_tiles(nk, block_k, grad_tile, 0)

    for_each_chunk(h_ref.shape[0], C, one_chunk)


def chunk_grads(q, k, v, g, do, hs, dhs, *, scale: float, chunk: int, block_k: int,
                block_v: int, span_limit: float, chunks_per_program: int, num_warps: int,
                num_stages: int, interpret: bool, starts=None):
    """dq, dk, dv, dg on padded inputs (with V tiles, float32 partials summed by XLA);
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

    def partial_map(vv, n, i):
        b, h = split_bh(i, H)
        return vv, b, n, h, 0

    k_spec = pl.BlockSpec((None, P * chunk, None, K), kmap)
    v_spec = pl.BlockSpec((None, P * chunk, None, block_v), vmap_)
    h_spec = pl.BlockSpec((None, None, P, K, block_v), hmap)
    if NV == 1:
        kgrad_spec = k_spec
        kgrad_shapes = [(B, Tp, H, K)] * 3
        kgrad_dtypes = [q.dtype, k.dtype, F32]
    else:
        kgrad_spec = pl.BlockSpec((None, None, P * chunk, None, K), partial_map)
        kgrad_shapes = [(NV, B, Tp, H, K)] * 3
        kgrad_dtypes = [F32, F32, F32]
    out_shape = [jax.ShapeDtypeStruct(s, d)
                 for s, d in zip(kgrad_shapes, kgrad_dtypes, strict=True)]
    out_shape.insert(2, jax.ShapeDtypeStruct((B, Tp, H, V), v.dtype))

    # Per head: A 2TCK, dA 2TCV, dv 2TCV + 2TKV, dq 2TCK + 2TKV, dk 2TCK + 2TKV, the K-side
    # terms once per V tile (each matmul once: 16-bit inputs run 2-3 dots per matmul for
    # accuracy, see common.mm); elementwise 37*T*K and 4*T*C per V tile, 3*T*V, 2*NT*K*V
    # (jaxla.flops.kernels; bytes: every array once).
    cost = pl.CostEstimate(
        flops=int(B * H * (NV * 6 * Tp * chunk * K + 4 * Tp * chunk * V + 6 * Tp * K * V
                           + NV * (37 * Tp * K + 4 * Tp * chunk) + 3 * Tp * V + 2 * NT * K * V)),
        transcendentals=int(B * H * NV * 5 * Tp * K),
        bytes_accessed=int(2 * q.size * itemsize(q.dtype) + g.size * 4
                           + 2 * v.size * itemsize(v.dtype)
                           + hs.size * itemsize(hs.dtype) + dhs.size * itemsize(dhs.dtype)
                           + sum(s.size * jnp.dtype(s.dtype).itemsize for s in out_shape)),
    )
    kernel = functools.partial(_grad_kernel, chunk=chunk, block_k=min(block_k, K), scale=scale,
                               span_limit=span_limit, dot_dtype=dot_dtype, precision=precision,
                               segments=starts is not None)
    in_specs = [k_spec, k_spec, v_spec, k_spec, v_spec, h_spec, h_spec]
    args = [q, k, v, g, do, hs, dhs]
    if starts is not None:
        in_specs.append(starts_spec(P * chunk, H))
        args.append(starts)
    dq, dk, dv, dg = pl.pallas_call(
        kernel,
        grid=(NV, NT // P, B * H),
        in_specs=in_specs,
        out_specs=[kgrad_spec, kgrad_spec, v_spec, kgrad_spec],
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        cost_estimate=cost,
        interpret=interpret,
        name="gla_chunk_bwd_grads",
    )(*args)
    if NV > 1:
        dq = dq.sum(0).astype(q.dtype)
        dk = dk.sum(0).astype(k.dtype)
        dg = dg.sum(0)
    return dq, dk, dv, dg


def chunk_bwd(q, k, v, g, hs, do, dht, *, scale: float, block_sizes: BlockSizes,
              interpret: bool, packed=None):
    """Gradients on padded inputs: (dq, dk, dv, dg float32, d initial_state float32); `packed`
    as in `chunk_fwd` (for documents, dht and d initial_state are `[N, H, K, V]`)."""
    bs = block_sizes
    dhs, dh0 = state_scan(
        q, do, g, dht.astype(F32), chunk=bs.chunk, reverse=True, scale=scale,
        block_k=bs.block_k_state, block_v=bs.block_v_state, num_warps=bs.num_warps_state,
        num_stages=bs.num_stages_state, interpret=interpret, name="gla_chunk_bwd_state_grads",
        packed=packed,
    )
    dq, dk, dv, dg = chunk_grads(
        q, k, v, g, do, hs, dhs, scale=scale, chunk=bs.chunk, block_k=bs.block_k,
        block_v=bs.block_v,
        span_limit=bs.span_limit_for(q.dtype), chunks_per_program=bs.chunks_per_program_bwd,
        num_warps=bs.num_warps_bwd, num_stages=bs.num_stages_bwd,
        interpret=interpret,
        starts=packed[1] if packed is not None and packed[0] == "segments" else None,
    )
    return dq, dk, dv, dg, dh0
