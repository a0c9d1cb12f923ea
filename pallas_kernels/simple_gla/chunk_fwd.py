"""Chunked simple GLA forward: one fused kernel, one sequential sweep over chunks per program.

Per chunk n (rows i, j in the chunk; S_n = the float32 state entering it), with the per-step
log-decays in log2 units (common.py) and G_i their sum over the chunk's rows up to and including
i (computed in the kernel from the per-step gates, or from the head's constant decay):
  o = scale * [((q k^T) * 2^(G_i - G_j) * causal) v + 2^(G_i) (q S_n)]
  S_{n+1} = 2^(G_last) S_n + k^T (v * 2^(G_last - G))
A scalar decay per head makes the intra-chunk decay an element-wise mask on q k^T, so every
product is a plain matmul (no GLA sub-chunking); all exponents are <= 0.

Grid (V/block_v, B, H): each program keeps its float32 state tile [K, block_v] in registers and
walks the chunks in order, so the states never touch HBM (FLA's `chunk_fwd_h` writes h
[B, T/C, H, K, V] and reads it back in a second kernel): q, k, v are read and o written once.
The loads of chunk n+1 do not depend on the state, so Triton's num_stages pipelining overlaps
them with chunk n's dots.
Packed documents (common.py): with "resets" the decays of each chunk carry the documents'
masks (pairs across a start, rows past a start reading S_n, rows before one reaching S_{n+1},
S_n decaying into S_{n+1} when the chunk holds a start), the arithmetic is unchanged; with
"docs" (inputs aligned to chunks) the state is replaced by the document's initial state on its
first chunk and stored as its final state after its last.
bf16 inputs: bf16 dot operands (the state and the masked scores are rounded to bf16 for their
dots, as in FLA), float32 accumulation, float32 gates and state. float32 inputs: IEEE dots.
Byte and FLOP budgets and timings: benchmarks/RESULTS.md, "Kernel design notes".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.simple_gla.common import (
    FIRST,
    LAST,
    chunk_gates,
    compiler_params,
    cost,
    dot,
    dot_precision,
    gate_bytes,
    gate_flops,
    itemsize,
    loop,
    replace_state,
    side_inputs,
    state_spec,
    store_state,
)


def _fwd_kernel(q_ref, k_ref, v_ref, *refs, chunk, seq_len, num_chunks, scale, gate_mode,
                packing, has_h0):
    refs = list(refs)
    gate_ref = refs.pop(0) if gate_mode != "none" else None
    starts_ref = refs.pop(0) if packing == "resets" else None
    edges_ref = refs.pop(0) if packing == "docs" else None
    h0_ref = refs.pop(0) if has_h0 else None
    o_ref, ht_ref = refs
    C = chunk
    dtype = q_ref.dtype
    precision = dot_precision(dtype)
    Kp, bv = q_ref.shape[-1], v_ref.shape[-1]

    def load_initial(d):
        return h0_ref[d, :, :]

    def store_final(d, S):
        ht_ref[d, :, :] = S

    def body(n, S):
        rows = pl.ds(n * C, C)
        if edges_ref is not None:  # a document's first chunk enters with its initial state
            S = replace_state(edges_ref, FIRST, n, S, load_initial if has_h0 else None)
        q, k, v = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
        starts = None if starts_ref is None else starts_ref[rows]
        G, G_last, G_rev, diff = chunk_gates(gate_ref, n, mode=gate_mode, chunk=C,
                                             seq_len=seq_len, exact=dtype == jnp.float32,
                                             starts=starts)
        A = dot(q, k, tb=True, precision=precision) * (jnp.exp2(diff) * scale)
        o = dot(A.astype(dtype), v, precision=precision)
        o += dot(q, S.astype(dtype), precision=precision) * (scale * jnp.exp2(G))[:, None]
        o_ref[rows, :] = o.astype(o_ref.dtype)
        v_decayed = (v.astype(jnp.float32) * jnp.exp2(G_rev)[:, None]).astype(dtype)
        S = S * jnp.exp2(G_last) + dot(k, v_decayed, ta=True, precision=precision)
        if edges_ref is not None:  # a document's last chunk: its final state
            store_state(edges_ref, LAST, n, S, store_final)
        return S

    if edges_ref is not None:
        loop(num_chunks, body, jnp.zeros((Kp, bv), jnp.float32))
        return
    S = h0_ref[...].astype(jnp.float32) if has_h0 else jnp.zeros((Kp, bv), jnp.float32)
    ht_ref[...] = loop(num_chunks, body, S)


def chunk_fwd(q, k, v, gate, h0, *, scale, seq_len, gate_mode, block_sizes, interpret,
              starts=None, edges=None, num_docs=0):
    """Run the forward kernel on padded inputs.

    q, k: `[B, Tp, H, Kp]`; v: `[B, Tp, H, Vp]` (Tp a multiple of the chunk, Kp, Vp powers of
    two); gate: `[B, H, Tp]` float32 per-step log2-decays ("g"), `[H, C]` constant decays
    ("gamma") or None ("none"); h0: `[B, H, Kp, Vp]` float32 or None.
    Packed documents (common.py), at most one of: starts `[B, Tp]` int32 ("resets"); edges
    `[2, Tp / C]` int32 with num_docs >= 1 ("docs": B = 1, inputs aligned to chunks, h0 and the
    final state `[num_docs, H, Kp, Vp]`).
    Returns `(o [B, Tp, H, Vp] in q.dtype, final state [B or num_docs, H, Kp, Vp] float32)`.
    """
    B, Tp, H, Kp = q.shape
    Vp = v.shape[-1]
    bs = block_sizes
    C, bv = bs.chunk, bs.block_v
    N = Tp // C
    packing = "resets" if starts is not None else "docs" if edges is not None else "none"
    kernel = functools.partial(
        _fwd_kernel, chunk=C, seq_len=seq_len, num_chunks=N, scale=scale,
        gate_mode=gate_mode, packing=packing, has_h0=h0 is not None,
    )
    qk_spec = pl.BlockSpec((None, Tp, None, Kp), lambda iv, b, h: (b, 0, h, 0))
    v_spec = pl.BlockSpec((None, Tp, None, bv), lambda iv, b, h: (b, 0, h, iv))
    states = num_docs if packing == "docs" else B  # "docs": each program holds all documents
    state = state_spec(packing, num_docs, Kp, bv)
    specs, side = side_inputs(gate_mode, gate, packing, starts if packing == "resets" else edges,
                              [h0], state)
    in_specs, args = [qk_spec, qk_spec, v_spec, *specs], [q, k, v, *side]
    NV = Vp // bv
    # Per chunk and V tile: the dots, the gates, the scores' decay and scale, the inter-chunk
    # output's scale and sum, v's decay, the state update (jaxla.flops.kernels).
    flops = B * H * N * NV * (2 * C * (C * Kp + C * bv + 2 * Kp * bv)
                              + gate_flops(C, gate_mode, q.dtype == jnp.float32)
                              + 2 * C * C + 3 * C * bv + C + 2 * Kp * bv)
    state_bytes = 4 * states * H * Kp * Vp * (2 if h0 is not None else 1)
    nbytes = itemsize(q) * B * Tp * H * (2 * Kp + 2 * Vp) + state_bytes + gate_bytes(gate)
    nbytes += 0 if packing == "none" else 4 * (B * Tp if packing == "resets" else 2 * N)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, Tp, H, Vp), q.dtype),
            jax.ShapeDtypeStruct((states, H, Kp, Vp), jnp.float32),
        ),
        grid=(NV, B, H),
        in_specs=in_specs,
        out_specs=(v_spec, state),
        compiler_params=compiler_params(bs.num_warps_fwd, bs.num_stages_fwd),
        cost_estimate=cost(flops, B * H * NV * Tp * (C + 2), nbytes),
        interpret=interpret,
        name="simple_gla_chunk_fwd",
    )(*args)
