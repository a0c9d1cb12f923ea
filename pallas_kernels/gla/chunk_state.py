"""The chunk-level state scan shared by the forward (states) and the backward (state gradients).

Forward (`reverse=False`): the state entering chunk n, `S_n`, is stored, then
`S_{n+1} = diag(exp G_last) S_n + (k * exp(G_last - G))^T v`.
Backward (`reverse=True`): the gradient of the state leaving chunk n, `dS_n`, is stored, then
`dS_{n-1} = diag(exp G_last) dS_n + (scale * q * exp(G))^T do`; after chunk 0 it is d initial_state.

One program owns a `[BK, BV]` tile of the float32 state and walks all chunks of one (b, h) in
order; tiling K (rather than V) reads the float32 gates once. The loads of a step do not depend on
the state, so Triton's software pipelining (num_stages) prefetches the next chunk.

Packed documents (static `packing`):
* "segments": `starts [B, Tp]` (1.0 where a document starts). Within a chunk, e_t counts the
  starts up to row t: only rows with `e_t == e_last` reach the chunk's end state (forward), only
  rows with `e_t == 0` read the entering state (backward), and a chunk holding a start passes
  nothing across it (its decay is zero).
* "documents": documents aligned to chunks (B = 1). Per chunk: `chunk_starts`, `chunk_ends`
  (1.0 / 0.0) and `chunk_docs` (document index, 0 on padding). Forward: a document's first chunk
  enters with `s0[doc]` and its last chunk's end state is `sT[doc]` (s0, sT `[N, H, K, V]`).
  Backward: a document's last chunk leaves with the cotangent `s0[doc]` of its final state and
  the gradient entering its first chunk is `sT[doc]`, d initial_state.
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
    choose,
    chunk_gates,
    itemsize,
    mm,
    operand_dtype,
    split_bh,
    suffix_sums,
    use_matmul_path,
)
from pallas_kernels.gla.config import DEFAULT_SPAN_LIMIT


def _scalar(ref, n):
    """Element n of a 1-D ref as a scalar (max keeps the dtype; sum would widen under x64)."""
    return jnp.max(ref[pl.ds(n, 1)])


def _state_scan_kernel(x_ref, y_ref, g_ref, s0_ref, *refs, chunk, reverse, scale, span_limit,
                       dot_dtype, precision, packing):
    # x_ref, g_ref: [Tp, BK]; y_ref: [Tp, BV]; s0_ref, sT_ref: [BK, BV] ([N, BK, BV] for
    # "documents"); states_ref: [NT, BK, BV]; starts_ref: [Tp]; chunk_*_ref: [NT].
    refs = list(refs)
    starts_ref = refs.pop(0) if packing == "segments" else None
    if packing == "documents":
        first_ref, last_ref, doc_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    states_ref, sT_ref = refs
    NT = states_ref.shape[0]

    def body(i, s):
        n = NT - 1 - i if reverse else i
        if packing == "documents":
            doc = _scalar(doc_ref, n)
            enter = _scalar(last_ref if reverse else first_ref, n) > 0
            s = lax.cond(enter, lambda: s0_ref[doc].astype(F32), lambda: s)
        states_ref[n] = s.astype(states_ref.dtype)
        rows = pl.ds(pl.multiple_of(n * chunk, chunk), chunk)
        g = g_ref[rows, :].astype(F32)
        GL = jnp.sum(g, axis=0)
        x = x_ref[rows, :].astype(F32)
        G, GL_row = chunk_gates(g)
        if reverse:
            w = x * (scale * jnp.exp(G))
        else:
            # exp(G_last - G): the exact suffix sums only where the chunk's decay span exceeds
            # the matmul-path limit (elsewhere the cumsum difference errs by ~eps * span).
            S = choose(lambda: use_matmul_path(GL_row, span_limit), span_limit,
                       lambda: GL_row - G, lambda: suffix_sums(g))
            w = x * jnp.exp(S)
        decay = jnp.exp(GL)[:, None]
        if packing == "segments":
            e = jnp.cumsum(starts_ref[rows])
            e_last = jnp.max(e)
            w = jnp.where(((e == 0) if reverse else (e == e_last))[:, None], w, 0.0)
            decay = jnp.where(e_last == 0, decay, 0.0)
        update = mm(w, y_ref[rows, :], dtype=dot_dtype, precision=precision, trans_a=True,
                    split=1)
        s = s * decay + update
        if packing == "documents":
            @pl.when(_scalar(first_ref if reverse else last_ref, n) > 0)
            def _():
                sT_ref[doc] = s

        return s

    if packing == "documents":
        lax.fori_loop(0, NT, body, jnp.zeros(sT_ref.shape[1:], F32))
    else:
        sT_ref[...] = lax.fori_loop(0, NT, body, s0_ref[...].astype(F32))


def state_scan(x, y, g, s0, *, chunk: int, reverse: bool, scale: float, block_k: int,
               block_v: int, num_warps: int, num_stages: int, interpret: bool, name: str,
               span_limit: float | None = None, packed=None):
    """Chunk states (or state gradients) `[B, H, NT, K, V]` in x's dtype and the end state.

    x, g: `[B, Tp, H, K]` (k or q; g float32); y: `[B, Tp, H, V]` (v or do); s0: `[B, H, K, V]`
    float32 (initial state, or the final-state cotangent when `reverse`). Tp % chunk == 0.
    span_limit (forward): as BlockSizes.span_limit; None takes DEFAULT_SPAN_LIMIT of x's dtype.
    packed: None, `("segments", starts [B, Tp] float32)` or `("documents", (first, last, docs))`
    (`[NT]` each; then s0 and the returned end states are `[N, H, K, V]`, B = 1): see the module
    docstring.
    """
    B, Tp, H, K = x.shape
    V = y.shape[-1]
    NT = Tp // chunk
    NK, NV = K // block_k, V // block_v
    dot_dtype, precision = operand_dtype(x.dtype)
    if span_limit is None:
        span_limit = DEFAULT_SPAN_LIMIT[jnp.dtype(x.dtype)]

    def xmap(kk, vv, i):
        b, h = split_bh(i, H)
        return b, 0, h, kk

    def ymap(kk, vv, i):
        b, h = split_bh(i, H)
        return b, 0, h, vv

    def smap(kk, vv, i):
        b, h = split_bh(i, H)
        return b, h, kk, vv

    def statesmap(kk, vv, i):
        b, h = split_bh(i, H)
        return b, h, 0, kk, vv

    x_spec = pl.BlockSpec((None, Tp, None, block_k), xmap)
    y_spec = pl.BlockSpec((None, Tp, None, block_v), ymap)
    s_spec = pl.BlockSpec((None, None, block_k, block_v), smap)
    states_spec = pl.BlockSpec((None, None, NT, block_k, block_v), statesmap)

    # Per head: the chunk contributions 2*T*K*V, the state update 2*NT*K*V, the gates and
    # weights 5*T*K per V tile (jaxla.flops.kernels; bytes: every array once).
    cost = pl.CostEstimate(
        flops=int(B * H * (2 * Tp * K * V + 2 * NT * K * V + NV * 5 * Tp * K)),
        transcendentals=int(B * H * NV * (Tp * K + NT * K)),
        bytes_accessed=int(
            x.size * itemsize(x.dtype) + g.size * 4 + y.size * itemsize(y.dtype)
            + B * H * NT * K * V * itemsize(x.dtype)
            + 2 * s0.size * 4
        ),
    )
    packing = None if packed is None else packed[0]
    in_specs, args = [x_spec, y_spec, x_spec], [x, y, g]
    if packing == "documents":
        N = s0.shape[0]

        def docs_map(kk, vv, i):
            return 0, lax.rem(i, jnp.int32(H)), kk, vv

        s_spec = pl.BlockSpec((N, None, block_k, block_v), docs_map)
        end_shape = (N, H, K, V)
    else:
        end_shape = (B, H, K, V)
    in_specs.append(s_spec)
    args.append(s0)
    if packing == "segments":
        in_specs.append(pl.BlockSpec((None, Tp), lambda kk, vv, i: (split_bh(i, H)[0], 0)))
        args.append(packed[1])
    elif packing == "documents":
        in_specs += [pl.BlockSpec((NT,), lambda kk, vv, i: (0,))] * 3
        args += list(packed[1])
    kernel = functools.partial(_state_scan_kernel, chunk=chunk, reverse=reverse, scale=scale,
                               span_limit=span_limit, dot_dtype=dot_dtype, precision=precision,
                               packing=packing)
    return pl.pallas_call(
        kernel,
        grid=(NK, NV, B * H),
        in_specs=in_specs,
        out_specs=[states_spec, s_spec],
        out_shape=[
            jax.ShapeDtypeStruct((B, H, NT, K, V), x.dtype),
            jax.ShapeDtypeStruct(end_shape, F32),
        ],
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        cost_estimate=cost,
        interpret=interpret,
        name=name,
    )(*args)
