"""Recurrent simple GLA forward (decoding, short inputs): one step per loop iteration.

`S_t = exp(g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`. Grid (V/block_v, B, H); each
program keeps its float32 state tile [K, block_v] in registers and walks the T steps, so one
launch serves a whole decode step (T = 1) or a short prompt. No matmuls: the update is an outer
product and the output a column sum, so any K, V >= 16 work (padded to powers of two).
Bytes: q, k, v read and o written once, the state read and written once: at T = 1 the state
(B*H*K*V*4 bytes, 4 MB for B=4, H=16, K=V=128) dominates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.simple_gla.common import compiler_params, cost, itemsize


def _recurrent_kernel(q_ref, k_ref, v_ref, *refs, seq_len, scale, gate_mode, has_h0):
    refs = list(refs)
    gate_ref = refs.pop(0) if gate_mode != "none" else None
    h0_ref = refs.pop(0) if has_h0 else None
    o_ref, ht_ref = refs
    Kp, bv = q_ref.shape[-1], v_ref.shape[-1]

    def body(t, S):
        q = q_ref[t, :].astype(jnp.float32)
        k = k_ref[t, :].astype(jnp.float32)
        v = v_ref[t, :].astype(jnp.float32)
        if gate_mode == "g":
            S = S * jnp.exp(gate_ref[t])
        elif gate_mode == "gamma":
            S = S * jnp.exp(gate_ref[0])
        S = S + k[:, None] * v[None, :]
        o_ref[t, :] = (scale * jnp.sum(q[:, None] * S, axis=0)).astype(o_ref.dtype)
        return S

    S = h0_ref[...].astype(jnp.float32) if has_h0 else jnp.zeros((Kp, bv), jnp.float32)
    ht_ref[...] = lax.fori_loop(0, seq_len, body, S)


def recurrent_fwd(q, k, v, gate, h0, *, scale, gate_mode, block_sizes, interpret):
    """q, k: `[B, T, H, Kp]`; v: `[B, T, H, Vp]`; gate: `[B, H, T]` float32 per-step log-decays
    ("g"), `[H, 16]` constant decays ("gamma") or None; h0 `[B, H, Kp, Vp]` float32 or None.
    Returns `(o [B, T, H, Vp] in q.dtype, final state [B, H, Kp, Vp] float32)`."""
    B, T, H, Kp = q.shape
    Vp = v.shape[-1]
    bv = block_sizes.block_v_recurrent
    kernel = functools.partial(_recurrent_kernel, seq_len=T, scale=scale, gate_mode=gate_mode,
                               has_h0=h0 is not None)
    qk_spec = pl.BlockSpec((None, T, None, Kp), lambda iv, b, h: (b, 0, h, 0))
    v_spec = pl.BlockSpec((None, T, None, bv), lambda iv, b, h: (b, 0, h, iv))
    state_spec = pl.BlockSpec((None, None, Kp, bv), lambda iv, b, h: (b, h, 0, iv))
    in_specs, args = [qk_spec, qk_spec, v_spec], [q, k, v]
    if gate_mode == "g":
        in_specs.append(pl.BlockSpec((None, None, T), lambda iv, b, h: (b, h, 0)))
        args.append(gate)
    elif gate_mode == "gamma":
        in_specs.append(pl.BlockSpec((None, gate.shape[-1]), lambda iv, b, h: (h, 0)))
        args.append(gate)
    if h0 is not None:
        in_specs.append(state_spec)
        args.append(h0)
    NV = Vp // bv
    nbytes = itemsize(q) * B * T * H * (2 * Kp + 2 * Vp) + 4 * B * H * Kp * Vp * 2
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, T, H, Vp), q.dtype),
            jax.ShapeDtypeStruct((B, H, Kp, Vp), jnp.float32),
        ),
        grid=(NV, B, H),
        in_specs=in_specs,
        out_specs=(v_spec, state_spec),
        compiler_params=compiler_params(block_sizes.num_warps_recurrent, 1),
        cost_estimate=cost(B * H * T * Kp * Vp * 5, B * H * T * NV, nbytes),
        interpret=interpret,
        name="simple_gla_recurrent_fwd",
    )(*args)
