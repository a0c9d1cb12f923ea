"""`jax.custom_vjp` glue for the simple GLA kernels: padding, gate preparation, gate gradients.

Both entry points take validated inputs (see `jaxla.ops.simple_gla`): q, k `[B, T, H, K]`,
v `[B, T, H, V]` (bf16, f16 or f32), optional g `[B, T, H]`, g_gamma `[H]` (log-decays <= 0) and
initial_state `[B, H, K, V]` float32. T pads up to a chunk multiple (zeros; padded steps do not
decay), K and V up to powers of two >= 16.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import default_interpret, pad_axis, padded_dim
from pallas_kernels.simple_gla.chunk_bwd import chunk_bwd
from pallas_kernels.simple_gla.chunk_fwd import chunk_fwd
from pallas_kernels.simple_gla.common import LOG2E
from pallas_kernels.simple_gla.config import BlockSizes, check_head_dims
from pallas_kernels.simple_gla.recurrent import recurrent_fwd

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class _Static:
    scale: float
    output_final_state: bool
    block_sizes: BlockSizes
    interpret: bool
    gate_grad: bool  # False when no gate can need a gradient (absent or a constant)
    g_dtype: object
    g_gamma_dtype: object


def _pad_seq(x, Tp, D):
    return pad_axis(pad_axis(x, 1, Tp), 3, D)


def _pad_state(x, Kp, Vp):
    return None if x is None else pad_axis(pad_axis(x.astype(jnp.float32), 2, Kp), 3, Vp)


def _prepare(q, k, v, g, g_gamma, h0, chunk):
    """Padded q, k, v, h0 and the chunked kernels' gate input."""
    B, T, H, K = q.shape
    Kp, Vp = padded_dim(K), padded_dim(v.shape[-1])
    Tp = -(-T // chunk) * chunk
    if g is not None:
        total = g.astype(jnp.float32)
        if g_gamma is not None:
            total = total + g_gamma.astype(jnp.float32)
        # zero log-decay on padded steps: they keep the state; log2 units (common.py)
        mode, gate = "g", jnp.transpose(pad_axis(total * LOG2E, 1, Tp), (0, 2, 1))
    elif g_gamma is not None:
        gamma = g_gamma.astype(jnp.float32) * LOG2E
        mode, gate = "gamma", jnp.broadcast_to(gamma[:, None], (H, chunk))
    else:
        mode, gate = "none", None
    return (_pad_seq(q, Tp, Kp), _pad_seq(k, Tp, Kp), _pad_seq(v, Tp, Vp), mode, gate,
            _pad_state(h0, Kp, Vp))


def _chunked_forward(q, k, v, g, g_gamma, h0, st: _Static):
    B, T, H, K = q.shape
    V = v.shape[-1]
    qp, kp, vp, mode, gate, h0p = _prepare(q, k, v, g, g_gamma, h0, st.block_sizes.chunk)
    o, ht = chunk_fwd(qp, kp, vp, gate, h0p, scale=st.scale, seq_len=T, gate_mode=mode,
                      block_sizes=st.block_sizes, interpret=st.interpret)
    return o[:, :T, :, :V], ht[:, :, :K, :V]


def _backward(st: _Static, q, k, v, g, g_gamma, h0, do, dht):
    """Cotangents of (q, k, v, g, g_gamma, h0) given those of the output and final state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    qp, kp, vp, mode, gate, h0p = _prepare(q, k, v, g, g_gamma, h0, st.block_sizes.chunk)
    Tp, Kp, Vp = qp.shape[1], qp.shape[-1], vp.shape[-1]
    dop = _pad_seq(do.astype(q.dtype), Tp, Vp)
    dhtp = _pad_state(dht, Kp, Vp)
    gate_grad = st.gate_grad and mode != "none"
    dq, dk, dv, dh0, terms = chunk_bwd(
        qp, kp, vp, dop, gate, h0p, dhtp, scale=st.scale, seq_len=T, gate_mode=mode,
        gate_grad=gate_grad, block_sizes=st.block_sizes, interpret=st.interpret,
    )
    dq, dk, dv = dq[:, :T, :, :K], dk[:, :T, :, :K], dv[:, :T, :, :V]
    dh0 = None if h0 is None else dh0[:, :, :K, :V].astype(h0.dtype)
    if gate_grad:
        # dg_s = P_n + sum_{i >= s} a_i + sum_{j < s} b_j + crossing_s, sums inside the chunk
        C = st.block_sizes.chunk
        a, b, crossing, P = (x.reshape(B, H, Tp // C, C) for x in terms)
        b_before = jnp.concatenate(
            [jnp.zeros_like(b[..., :1]), lax.cumsum(b[..., :-1], axis=3)], axis=3)
        dg = P + lax.cumsum(a, axis=3, reverse=True) + b_before + crossing
        dg = jnp.transpose(dg.reshape(B, H, Tp), (0, 2, 1))[:, :T]  # [B, T, H]
    else:
        dg = jnp.zeros((B, T, H), jnp.float32)
    dg_out = None if g is None else dg.astype(st.g_dtype)
    dgg_out = None if g_gamma is None else jnp.sum(dg, axis=(0, 1)).astype(st.g_gamma_dtype)
    return dq, dk, dv, dg_out, dgg_out, dh0


# --- chunked --------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunked(q, k, v, g, g_gamma, h0, st):
    o, ht = _chunked_forward(q, k, v, g, g_gamma, h0, st)
    return o, (ht if st.output_final_state else None)


def _chunked_fwd_rule(q, k, v, g, g_gamma, h0, st):
    o, ht = _chunked_forward(q, k, v, g, g_gamma, h0, st)
    return (o, ht if st.output_final_state else None), (q, k, v, g, g_gamma, h0)


def _chunked_bwd_rule(st, res, cts):
    do, dht = cts
    return _backward(st, *res, do, dht)


_chunked.defvjp(_chunked_fwd_rule, _chunked_bwd_rule)


# --- recurrent ------------------------------------------------------------------------------


def _recurrent_forward(q, k, v, g, g_gamma, h0, st: _Static):
    B, T, H, K = q.shape
    V = v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    if g is not None:
        total = g.astype(jnp.float32)
        if g_gamma is not None:
            total = total + g_gamma.astype(jnp.float32)
        mode, gate = "g", jnp.transpose(total, (0, 2, 1))
    elif g_gamma is not None:
        mode, gate = "gamma", jnp.broadcast_to(g_gamma.astype(jnp.float32)[:, None], (H, 16))
    else:
        mode, gate = "none", None
    o, ht = recurrent_fwd(
        pad_axis(q, 3, Kp), pad_axis(k, 3, Kp), pad_axis(v, 3, Vp), gate, _pad_state(h0, Kp, Vp),
        scale=st.scale, gate_mode=mode, block_sizes=st.block_sizes, interpret=st.interpret,
    )
    return o[..., :V], ht[:, :, :K, :V]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _recurrent(q, k, v, g, g_gamma, h0, st):
    o, ht = _recurrent_forward(q, k, v, g, g_gamma, h0, st)
    return o, (ht if st.output_final_state else None)


def _recurrent_fwd_rule(q, k, v, g, g_gamma, h0, st):
    o, ht = _recurrent_forward(q, k, v, g, g_gamma, h0, st)
    return (o, ht if st.output_final_state else None), (q, k, v, g, g_gamma, h0)


# The recurrent and chunked forms compute the same function: the chunked backward kernels
# serve both (decoding rarely differentiates; a short prompt pads to one chunk).
_recurrent.defvjp(_recurrent_fwd_rule, _chunked_bwd_rule)


# --- public ---------------------------------------------------------------------------------


def _is_constant(x) -> bool:
    return x is None or not isinstance(x, jax.core.Tracer)


def _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, chunk):
    K, V = q.shape[-1], v.shape[-1]
    check_head_dims(K, V)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise TypeError(
            f"the Pallas kernel takes bfloat16, float16 or float32 inputs, got {q.dtype=}")
    if block_sizes is None:
        block_sizes = BlockSizes.get_default(K, V, q.dtype, chunk)
    block_sizes = block_sizes.resolve(padded_dim(K), padded_dim(V), q.dtype)
    return _Static(
        scale=float(scale),
        output_final_state=bool(output_final_state),
        block_sizes=block_sizes,
        interpret=default_interpret() if interpret is None else bool(interpret),
        # A gate held as a constant (numpy, or a concrete array outside any trace) cannot be
        # differentiated: skip its gradient (lightning attention's g_gamma).
        gate_grad=not (_is_constant(g) and _is_constant(g_gamma)),
        g_dtype=None if g is None else jnp.dtype(g.dtype),
        g_gamma_dtype=None if g_gamma is None else jnp.dtype(g_gamma.dtype),
    )


def _scale_q(q, scale):
    """A traced scale cannot be a kernel constant: fold it into q (XLA differentiates it)."""
    if isinstance(scale, jax.core.Tracer):
        return (q * scale).astype(q.dtype), 1.0
    return q, scale


def simple_gla(q, k, v, g=None, g_gamma=None, *, scale=None, initial_state=None,
               output_final_state=False, block_sizes: BlockSizes | None = None, chunk=64,
               resets=None, chunk_docs=None, num_docs: int = 0, gate_grad: bool | None = None,
               interpret=None):
    """Chunked simple GLA on the Pallas kernels (differentiable).

    Returns `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32 or None)`.
    `block_sizes` overrides the defaults (`chunk` is used only when it is None).
    """
    if resets is not None or chunk_docs is not None:
        raise NotImplementedError("packed documents in the simple GLA kernels")
    q, scale = _scale_q(q, q.shape[-1] ** -0.5 if scale is None else scale)
    st = _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, chunk)
    g = None if g is None else jnp.asarray(g)
    g_gamma = None if g_gamma is None else jnp.asarray(g_gamma)
    return _chunked(q, k, v, g, g_gamma, initial_state, st)


def simple_gla_recurrent(q, k, v, g=None, g_gamma=None, *, scale=None, initial_state=None,
                         output_final_state=False, resets=None, docs=None, num_docs: int = 0,
                         block_sizes: BlockSizes | None = None, interpret=None):
    """Recurrent simple GLA on the Pallas kernel (decoding); gradients via the chunked backward."""
    if resets is not None or docs is not None:
        raise NotImplementedError("packed documents in the simple GLA kernels")
    q, scale = _scale_q(q, q.shape[-1] ** -0.5 if scale is None else scale)
    st = _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, 64)
    g = None if g is None else jnp.asarray(g)
    g_gamma = None if g_gamma is None else jnp.asarray(g_gamma)
    return _recurrent(q, k, v, g, g_gamma, initial_state, st)
