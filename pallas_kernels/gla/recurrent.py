"""Fused recurrent GLA (FLA's `fused_recurrent_gla`): one state update per token, for decoding
and short inputs.

Each program owns a `[K, BV]` float32 state tile of one (b, h) in registers and walks the tokens:
`S_t = diag(exp g_t) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`. The backward is two kernels:
`_dq_kernel` replays the forward and emits `dq_t = scale S_t do_t^T`; `_dkv_kernel` walks the
tokens backwards with the state gradient `dS_t = scale q_t^T do_t + diag(exp g_{t+1}) dS_{t+1}`,
emitting `dk_t = dS_t v_t^T`, `dv_t = k_t dS_t` and the gate gradient in closed form,
`dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + rowsum(S_T * dS_T)` (no per-step states stored; the
final state comes from the forward). The token's own pair (k_t^T v_t seen by q_t) adds
`c k_t` to dq_t and `c q_t` to dk_t, c = scale v_t . do_t, which cancel in q dq - k dk: the sum
leaves them out, so under strong decay (where the true dg is tiny) it does not carry their
rounding. dq, dk and dg sum over V tiles: float32 partials per tile, added by XLA.
Work per token is O(K V); for long inputs use the chunked kernels.

Packed documents (static `packing`): "segments" (`starts [B, T]`): the state is zeroed before a
start step, and backwards the state gradient and the running gate sum restart at 0 after it (the
previous document's end state reaches nothing); a start's own gate gradient is 0 (it decays a
zero state). "documents" (B = 1; `first`, `last` `[T]` flags and `docs [T]`): a document's first
step decays its own initial state `h0[doc]`, its last step's state is `ht[doc]`; backwards the
state gradient and the running gate sum restart at a last step from `dht[doc]` and
`rowsum(ht[doc] * dht[doc])`, and a first step hands its carry to `dh0[doc]`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.gla.common import F32, itemsize, split_bh
from pallas_kernels.gla.config import BlockSizes


def _row(ref, t):
    return ref[pl.ds(t, 1), :].astype(F32)  # [1, D]


def _flag(ref, t):
    """Step t's entry of a 1-D ref as a scalar (max keeps the dtype under x64)."""
    return jnp.max(ref[pl.ds(t, 1)])


class _Packing:
    """The per-step packing refs of a kernel, popped from its positional refs."""

    def __init__(self, packing, refs: list):
        self.mode = packing
        self.starts = refs.pop(0) if packing == "segments" else None
        if packing == "documents":
            self.first, self.last, self.docs = refs.pop(0), refs.pop(0), refs.pop(0)

    def enter(self, t, s, s0_ref):
        """The state before step t's decay: zeroed at a segment start, the document's own
        initial state at a document's first step."""
        if self.mode == "segments":
            return jnp.where(_flag(self.starts, t) > 0, 0.0, s)
        if self.mode == "documents":
            doc = _flag(self.docs, t)
            return lax.cond(_flag(self.first, t) > 0, lambda: s0_ref[doc].astype(F32),
                            lambda: s)
        return s


def _fwd_kernel(q_ref, k_ref, v_ref, g_ref, h0_ref, *refs, scale, packing):
    # q, k, g: [T, K]; v, o: [T, BV]; h0, ht: [K, BV] ([N, K, BV] for documents)
    refs = list(refs)
    pk = _Packing(packing, refs)
    o_ref, ht_ref = refs
    T = q_ref.shape[0]

    def body(t, s):
        s = pk.enter(t, s, h0_ref)
        k_col = _row(k_ref, t).T  # [K, 1]
        s = s * jnp.exp(_row(g_ref, t)).T + k_col * _row(v_ref, t)
        q_col = (scale * _row(q_ref, t)).T
        o_ref[pl.ds(t, 1), :] = jnp.sum(s * q_col, axis=0, keepdims=True).astype(o_ref.dtype)
        if packing == "documents":
            @pl.when(_flag(pk.last, t) > 0)
            def _():
                ht_ref[_flag(pk.docs, t)] = s

        return s

    if packing == "documents":
        lax.fori_loop(0, T, body, jnp.zeros(h0_ref.shape[1:], F32))
    else:
        ht_ref[...] = lax.fori_loop(0, T, body, h0_ref[...].astype(F32))


def _dq_kernel(k_ref, v_ref, g_ref, do_ref, h0_ref, *refs, scale, packing):
    # k, g: [T, K]; v, do: [T, BV]; h0: [K, BV] ([N, K, BV]); dq: [T, K] float32 partial over
    # this V tile, without token t's own term scale k_t (v_t . do_t) (added by _dkv_kernel).
    refs = list(refs)
    pk = _Packing(packing, refs)
    (dq_ref,) = refs
    T = k_ref.shape[0]

    def body(t, s):
        s = pk.enter(t, s, h0_ref) * jnp.exp(_row(g_ref, t)).T  # diag(exp g_t) S_{t-1}
        dq_ref[pl.ds(t, 1), :] = (scale * jnp.sum(s * _row(do_ref, t), axis=1))[None, :]
        return s + _row(k_ref, t).T * _row(v_ref, t)

    init = (jnp.zeros(h0_ref.shape[1:], F32) if packing == "documents"
            else h0_ref[...].astype(F32))
    lax.fori_loop(0, T, body, init)


def _dkv_kernel(q_ref, k_ref, v_ref, g_ref, do_ref, dqp_ref, ht_ref, dht_ref, *refs, scale,
                packing):
    # q, k, g, dqp (from _dq_kernel), dq, dk, dg (partials): [T, K]; v, do, dv: [T, BV];
    # ht, dht, dh0: [K, BV] ([N, K, BV] for documents)
    refs = list(refs)
    pk = _Packing(packing, refs)
    dq_ref, dk_ref, dv_ref, dg_ref, dh0_ref = refs
    T = q_ref.shape[0]

    def rowsum(ht, dht):  # rowsum(S * dS): the gate gradient reaching through a state, [1, K]
        return jnp.sum(ht.astype(F32) * dht, axis=1)[None, :]

    def body(i, carry):
        t = T - 1 - i
        ds, acc = carry  # ds: gradient reaching S_t from later tokens
        if packing == "documents":  # a document's last step: its final state's cotangent
            doc = _flag(pk.docs, t)
            ds, acc = lax.cond(
                _flag(pk.last, t) > 0,
                lambda: (dht_ref[doc].astype(F32), rowsum(ht_ref[doc], dht_ref[doc])),
                lambda: (ds, acc))
        q, k, v, do = _row(q_ref, t), _row(k_ref, t), _row(v_ref, t), _row(do_ref, t)
        dq_prev = _row(dqp_ref, t)
        dk_next = jnp.sum(ds * v, axis=1)[None, :]
        # q dq - k dk without token t's own pair, whose two terms cancel exactly
        acc = acc + q * dq_prev - k * dk_next
        own = scale * jnp.sum(do * v, axis=1, keepdims=True)  # [1, 1]
        dq_ref[pl.ds(t, 1), :] = dq_prev + own * k
        dk_ref[pl.ds(t, 1), :] = dk_next + own * q
        ds = ds + (scale * q).T * do  # dS_t
        dv_ref[pl.ds(t, 1), :] = jnp.sum(ds * k.T, axis=0, keepdims=True).astype(dv_ref.dtype)
        ds = ds * jnp.exp(_row(g_ref, t)).T
        if packing == "segments":  # a start: nothing flows into the previous document
            start = _flag(pk.starts, t) > 0
            dg_ref[pl.ds(t, 1), :] = jnp.where(start, 0.0, acc)
            return jnp.where(start, 0.0, ds), jnp.where(start, 0.0, acc)
        dg_ref[pl.ds(t, 1), :] = acc
        if packing == "documents":
            @pl.when(_flag(pk.first, t) > 0)
            def _():
                dh0_ref[doc] = ds

        return ds, acc

    if packing == "documents":
        zeros = jnp.zeros(ht_ref.shape[1:], F32)
        lax.fori_loop(0, T, body, (zeros, jnp.zeros((1, zeros.shape[0]), F32)))
    else:
        dht = dht_ref[...].astype(F32)
        ds, _ = lax.fori_loop(0, T, body, (dht, rowsum(ht_ref[...], dht)))
        dh0_ref[...] = ds


def _specs(B, T, H, K, V, BV, packing=None, num_docs=0):
    """Block specs: [T, K] rows, [T, BV] rows, the state tile ([N, K, BV] per-document states),
    dq/dk/dg partials, and the packing inputs."""
    def kmap(vv, i):
        b, h = split_bh(i, H)
        return b, 0, h, 0

    def vmap_(vv, i):
        b, h = split_bh(i, H)
        return b, 0, h, vv

    def smap(vv, i):
        b, h = split_bh(i, H)
        return b, h, 0, vv

    def partial_map(vv, i):
        b, h = split_bh(i, H)
        return vv, b, 0, h, 0

    if packing == "documents":
        state = pl.BlockSpec((num_docs, None, K, BV),
                             lambda vv, i: (0, lax.rem(i, jnp.int32(H)), 0, vv))
        flags = [pl.BlockSpec((T,), lambda vv, i: (0,))] * 3
    else:
        state = pl.BlockSpec((None, None, K, BV), smap)
        flags = ([pl.BlockSpec((None, T), lambda vv, i: (split_bh(i, H)[0], 0))]
                 if packing == "segments" else [])
    return (pl.BlockSpec((None, T, None, K), kmap), pl.BlockSpec((None, T, None, BV), vmap_),
            state, pl.BlockSpec((None, None, T, None, K), partial_map), flags)


def _params(bs: BlockSizes):
    return pltriton.CompilerParams(num_warps=bs.num_warps_recurrent,
                                   num_stages=bs.num_stages_recurrent)


def recurrent_fwd(q, k, v, g, h0, *, scale: float, block_sizes: BlockSizes, interpret: bool,
                  packed=None):
    """o `[B, T, H, V]` and the final state `[B, H, K, V]` float32 (K, V powers of two).

    packed: None, `("segments", starts [B, T] float32)` or `("documents", (first, last, docs))`
    (`[T]` each, B = 1; then h0 and the final state are `[N, H, K, V]`).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    BV = block_sizes.block_v_recurrent
    NV = V // BV
    packing, flags = (None, ()) if packed is None else (packed[0], _as_tuple(packed[1]))
    k_spec, v_spec, s_spec, _, f_specs = _specs(B, T, H, K, V, BV, packing, h0.shape[0])
    # Per step: decay, outer product, sum and readout 5*K*V, q's scale K per V tile
    # (jaxla.flops.kernels; bytes: every array once).
    cost = pl.CostEstimate(
        flops=int(B * H * T * (5 * K * V + NV * K)), transcendentals=int(NV * B * H * T * K),
        bytes_accessed=int(2 * q.size * itemsize(q.dtype) + g.size * 4
                           + 2 * v.size * itemsize(v.dtype) + 2 * h0.size * 4),
    )
    return pl.pallas_call(
        functools.partial(_fwd_kernel, scale=scale, packing=packing),
        grid=(NV, B * H),
        in_specs=[k_spec, k_spec, v_spec, k_spec, s_spec, *f_specs],
        out_specs=[v_spec, s_spec],
        out_shape=[jax.ShapeDtypeStruct(v.shape, q.dtype),
                   jax.ShapeDtypeStruct(h0.shape, F32)],
        compiler_params=_params(block_sizes),
        cost_estimate=cost,
        interpret=interpret,
        name="gla_recurrent_fwd",
    )(q, k, v, g, h0, *flags)


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def recurrent_bwd(q, k, v, g, h0, ht, do, dht, *, scale: float, block_sizes: BlockSizes,
                  interpret: bool, packed=None):
    """(dq, dk, dv, dg float32, d initial_state float32) of the recurrent form."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BV = block_sizes.block_v_recurrent
    NV = V // BV
    packing, flags = (None, ()) if packed is None else (packed[0], _as_tuple(packed[1]))
    k_spec, v_spec, s_spec, p_spec, f_specs = _specs(B, T, H, K, V, BV, packing, h0.shape[0])
    partial = jax.ShapeDtypeStruct((NV, B, T, H, K), F32)
    # jaxla.flops.kernels; bytes: every array once (k, g, v, do in both, q in the second).
    in_bytes = q.size * itemsize(q.dtype) + g.size * 4 + 2 * v.size * itemsize(v.dtype)
    partial_bytes = NV * B * T * H * K * 4
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, packing=packing),
        grid=(NV, B * H),
        in_specs=[k_spec, v_spec, k_spec, v_spec, s_spec, *f_specs],
        out_specs=p_spec,
        out_shape=partial,
        compiler_params=_params(block_sizes),
        cost_estimate=pl.CostEstimate(
            flops=int(B * H * T * (5 * K * V + NV * K)), transcendentals=int(NV * B * H * T * K),
            bytes_accessed=int(in_bytes + h0.size * 4 + partial_bytes)),
        interpret=interpret,
        name="gla_recurrent_bwd_dq",
    )(k, v, g, do, h0, *flags)
    dq, dk, dv, dg, dh0 = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=scale, packing=packing),
        grid=(NV, B * H),
        in_specs=[k_spec, k_spec, v_spec, k_spec, v_spec, p_spec, s_spec, s_spec, *f_specs],
        out_specs=[p_spec, p_spec, v_spec, p_spec, s_spec],
        out_shape=[partial, partial, jax.ShapeDtypeStruct(v.shape, v.dtype), partial,
                   jax.ShapeDtypeStruct(h0.shape, F32)],
        compiler_params=_params(block_sizes),
        cost_estimate=pl.CostEstimate(
            flops=int(B * H * T * (7 * K * V + NV * (9 * K + 2 * BV + 1))),
            transcendentals=int(NV * B * H * T * K),
            bytes_accessed=int(in_bytes + q.size * itemsize(q.dtype) + v.size * itemsize(v.dtype)
                               + 4 * partial_bytes + 3 * h0.size * 4)),
        interpret=interpret,
        name="gla_recurrent_bwd_dkv",
    )(q, k, v, g, do, dq, ht, dht.astype(F32), *flags)
    return (dq.sum(0).astype(q.dtype), dk.sum(0).astype(k.dtype), dv, dg.sum(0), dh0)
