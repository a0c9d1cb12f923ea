"""Recurrent simple GLA forward (decoding, short inputs): one step per loop iteration.

`S_t = exp(g_t) S_{t-1} + k_t^T v_t`, `o_t = scale * q_t S_t`. Grid (V/block_v, B, H); each
program keeps its float32 state tile [K, block_v] in registers and walks the T steps, so one
launch serves a whole decode step (T = 1) or a short prompt. No matmuls: the update is an outer
product and the output a column sum, so any K, V >= 16 work (padded to powers of two).
Bytes: q, k, v read and o written once, the state read and written once: at T = 1 the state
(B*H*K*V*4 bytes, 4 MB for B=4, H=16, K=V=128) dominates.
Packed documents (static; common.py): "resets" reads a `[T]` int32 row of starts and sets the
state to zero before a start's step; "docs" (B = 1) reads the `[2, T]` document edges, loads a
document's initial state before its first step and stores its final state after its last.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels.simple_gla.common import (
    FIRST,
    LAST,
    compiler_params,
    cost,
    gate_bytes,
    itemsize,
    loop,
    replace_state,
    side_inputs,
    state_spec,
    store_state,
)


def _recurrent_kernel(q_ref, k_ref, v_ref, *refs, seq_len, scale, gate_mode, packing, has_h0):
    refs = list(refs)
    gate_ref = refs.pop(0) if gate_mode != "none" else None
    resets_ref = refs.pop(0) if packing == "resets" else None
    edges_ref = refs.pop(0) if packing == "docs" else None
    h0_ref = refs.pop(0) if has_h0 else None
    o_ref, ht_ref = refs
    Kp, bv = q_ref.shape[-1], v_ref.shape[-1]

    def load_initial(d):
        return h0_ref[d, :, :]

    def store_final(d, S):
        ht_ref[d, :, :] = S

    def body(t, S):
        if resets_ref is not None:
            S = jnp.where(resets_ref[t] != 0, jnp.float32(0.0), S)
        if edges_ref is not None:
            S = replace_state(edges_ref, FIRST, t, S, load_initial if has_h0 else None)
        q = q_ref[t, :].astype(jnp.float32)
        k = k_ref[t, :].astype(jnp.float32)
        v = v_ref[t, :].astype(jnp.float32)
        if gate_mode == "g":
            S = S * jnp.exp(gate_ref[t])
        elif gate_mode == "gamma":
            S = S * jnp.exp(gate_ref[np.int32(0)])  # an int32 index also under x64
        S = S + k[:, None] * v[None, :]
        o_ref[t, :] = (scale * jnp.sum(q[:, None] * S, axis=0)).astype(o_ref.dtype)
        if edges_ref is not None:
            store_state(edges_ref, LAST, t, S, store_final)
        return S

    if edges_ref is not None:
        loop(seq_len, body, jnp.zeros((Kp, bv), jnp.float32))
        return
    S = h0_ref[...].astype(jnp.float32) if has_h0 else jnp.zeros((Kp, bv), jnp.float32)
    ht_ref[...] = loop(seq_len, body, S)


def recurrent_fwd(q, k, v, gate, h0, *, scale, gate_mode, block_sizes, interpret, resets=None,
                  edges=None, num_docs=0):
    """q, k: `[B, T, H, Kp]`; v: `[B, T, H, Vp]`; gate: `[B, H, T]` float32 per-step log-decays
    ("g"), `[H, 16]` constant decays ("gamma") or None; h0 `[B, H, Kp, Vp]` float32 or None.
    Packed documents, at most one of: resets `[B, T]` int32 (1 where a document starts); edges
    `[2, T]` int32 with num_docs >= 1 (B = 1; h0 and the final state `[num_docs, H, Kp, Vp]`).
    Returns `(o [B, T, H, Vp] in q.dtype, final state [B or num_docs, H, Kp, Vp] float32)`."""
    B, T, H, Kp = q.shape
    Vp = v.shape[-1]
    bv = block_sizes.block_v_recurrent
    packing = "resets" if resets is not None else "docs" if edges is not None else "none"
    kernel = functools.partial(_recurrent_kernel, seq_len=T, scale=scale, gate_mode=gate_mode,
                               packing=packing, has_h0=h0 is not None)
    qk_spec = pl.BlockSpec((None, T, None, Kp), lambda iv, b, h: (b, 0, h, 0))
    v_spec = pl.BlockSpec((None, T, None, bv), lambda iv, b, h: (b, 0, h, iv))
    states = num_docs if packing == "docs" else B  # "docs": each program holds all documents
    state = state_spec(packing, num_docs, Kp, bv)
    specs, side = side_inputs(gate_mode, gate, packing, resets if packing == "resets" else edges,
                              [h0], state)
    in_specs, args = [qk_spec, qk_spec, v_spec, *specs], [q, k, v, *side]
    NV = Vp // bv
    nbytes = (itemsize(q) * B * T * H * (2 * Kp + 2 * Vp) + gate_bytes(gate)
              + 4 * states * H * Kp * Vp * (2 if h0 is not None else 1))
    nbytes += 0 if packing == "none" else 4 * (B * T if packing == "resets" else 2 * T)
    return pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((B, T, H, Vp), q.dtype),
            jax.ShapeDtypeStruct((states, H, Kp, Vp), jnp.float32),
        ),
        grid=(NV, B, H),
        in_specs=in_specs,
        out_specs=(v_spec, state),
        compiler_params=compiler_params(block_sizes.num_warps_recurrent, 1),
        cost_estimate=cost(B * H * T * (5 * Kp * Vp + Vp), B * H * T * NV, nbytes),
        interpret=interpret,
        name="simple_gla_recurrent_fwd",
    )(*args)
