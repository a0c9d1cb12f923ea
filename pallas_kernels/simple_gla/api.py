"""`jax.custom_vjp` glue for the simple GLA kernels: padding, gate preparation, gate gradients,
packed documents.

Both entry points take validated inputs (see `jaxla.ops.simple_gla`): q, k `[B, T, H, K]`,
v `[B, T, H, V]` (bf16, f16 or f32), optional g `[B, T, H]`, g_gamma `[H]` (log-decays <= 0) and
initial_state `[B, H, K, V]` float32. T pads up to a chunk multiple (zeros; padded steps do not
decay), K and V up to powers of two >= 16.

Packed documents (`packing.py`; a static mode, "none" is the dense path with no extra input):
* resets `[B, T]`: the chunked kernels read each chunk's start counts, the recurrent kernel the
  resets themselves; the recurrent form's gradients come from the chunked backward with resets.
* chunk_docs `[NT]` (chunked, B = 1): inputs already aligned to chunks of T // NT steps (the
  kernel's chunk), g the total per-step gate (zero on padding rows; a g_gamma would decay them,
  so it is refused), states `[num_docs, H, K, V]`.
* docs `[T]` (recurrent, B = 1): per-step document edges in the forward kernel. Its gradients
  come from the chunked per-document backward on a copy aligned to chunks (`pallas_kernels.aligned`)
  with the total gate per step: exact, and no second backward to keep; the alignment costs a
  gather of q, k, v, do and up to num_docs padding chunks, which a decoding-sized input bears.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import default_interpret, is_pow2, pad_axis, padded_dim
from pallas_kernels.aligned import align, from_aligned, to_aligned
from pallas_kernels.simple_gla.chunk_bwd import chunk_bwd
from pallas_kernels.simple_gla.chunk_fwd import chunk_fwd
from pallas_kernels.simple_gla.common import LOG2E
from pallas_kernels.simple_gla.config import MAX_CHUNK, BlockSizes, check_head_dims
from pallas_kernels.simple_gla.packing import chunk_starts, document_edges
from pallas_kernels.simple_gla.recurrent import recurrent_fwd

DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))
PACKINGS = ("none", "resets", "docs")


@dataclasses.dataclass(frozen=True)
class _Static:
    scale: float
    output_final_state: bool
    block_sizes: BlockSizes
    interpret: bool
    gate_grad: bool  # False when no gate needs a gradient (absent, a constant, or told so)
    g_dtype: object
    g_gamma_dtype: object
    packing: str = "none"  # one of PACKINGS (module docstring)
    num_docs: int = 0


def _pad_seq(x, Tp, D):
    return pad_axis(pad_axis(x, 1, Tp), 3, D)


def _pad_state(x, Kp, Vp):
    return None if x is None else pad_axis(pad_axis(x.astype(jnp.float32), 2, Kp), 3, Vp)


def _total_gate(g, g_gamma):
    """g + g_gamma `[B, T, H]` float32 (g must be given)."""
    total = g.astype(jnp.float32)
    return total if g_gamma is None else total + g_gamma.astype(jnp.float32)


def _prepare(q, k, v, g, g_gamma, h0, marks, st: _Static):
    """Padded q, k, v, h0, the chunked kernels' gate input and packing inputs."""
    B, T, H, K = q.shape
    chunk = st.block_sizes.chunk
    Kp, Vp = padded_dim(K), padded_dim(v.shape[-1])
    Tp = -(-T // chunk) * chunk
    if g is not None:
        # zero log-decay on padded steps: they keep the state; log2 units (common.py)
        total = _total_gate(g, g_gamma)
        mode, gate = "g", jnp.transpose(pad_axis(total * LOG2E, 1, Tp), (0, 2, 1))
    elif g_gamma is not None:
        gamma = g_gamma.astype(jnp.float32) * LOG2E
        mode, gate = "gamma", jnp.broadcast_to(gamma[:, None], (H, chunk))
    else:
        mode, gate = "none", None
    packing = dict(
        starts=chunk_starts(marks, chunk, Tp) if st.packing == "resets" else None,
        edges=document_edges(marks) if st.packing == "docs" else None,
        num_docs=st.num_docs)
    return (_pad_seq(q, Tp, Kp), _pad_seq(k, Tp, Kp), _pad_seq(v, Tp, Vp), mode, gate,
            _pad_state(h0, Kp, Vp), packing)


def _chunked_forward(st: _Static, q, k, v, g, g_gamma, h0, marks):
    B, T, H, K = q.shape
    V = v.shape[-1]
    qp, kp, vp, mode, gate, h0p, packing = _prepare(q, k, v, g, g_gamma, h0, marks, st)
    o, ht = chunk_fwd(qp, kp, vp, gate, h0p, scale=st.scale, seq_len=T, gate_mode=mode,
                      block_sizes=st.block_sizes, interpret=st.interpret, **packing)
    return o[:, :T, :, :V], ht[:, :, :K, :V]


def _backward(st: _Static, q, k, v, g, g_gamma, h0, marks, do, dht):
    """Cotangents of (q, k, v, g, g_gamma, h0, marks) given those of the output and final state.

    The kernels return the gate gradient's four terms per step (chunk_bwd.py; documents are
    in their masks and state overrides): dg_s = P_n + sum_{i >= s} a_i + sum_{j < s} b_j +
    crossing_s, sums inside s's chunk.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    qp, kp, vp, mode, gate, h0p, packing = _prepare(q, k, v, g, g_gamma, h0, marks, st)
    Tp, Kp, Vp = qp.shape[1], qp.shape[-1], vp.shape[-1]
    dop = _pad_seq(do.astype(q.dtype), Tp, Vp)
    dhtp = _pad_state(dht, Kp, Vp)
    gate_grad = st.gate_grad and mode != "none"
    dq, dk, dv, dh0, terms = chunk_bwd(
        qp, kp, vp, dop, gate, h0p, dhtp, scale=st.scale, seq_len=T, gate_mode=mode,
        gate_grad=gate_grad, block_sizes=st.block_sizes, interpret=st.interpret, **packing,
    )
    dq, dk, dv = dq[:, :T, :, :K], dk[:, :T, :, :K], dv[:, :T, :, :V]
    dh0 = None if h0 is None else dh0[:, :, :K, :V].astype(h0.dtype)
    if gate_grad:
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
    return dq, dk, dv, dg_out, dgg_out, dh0, None


# --- chunked --------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(st, q, k, v, g, g_gamma, h0, marks):
    o, ht = _chunked_forward(st, q, k, v, g, g_gamma, h0, marks)
    return o, (ht if st.output_final_state else None)


def _chunked_fwd_rule(st, q, k, v, g, g_gamma, h0, marks):
    o, ht = _chunked_forward(st, q, k, v, g, g_gamma, h0, marks)
    return (o, ht if st.output_final_state else None), (q, k, v, g, g_gamma, h0, marks)


def _chunked_bwd_rule(st, res, cts):
    do, dht = cts
    return _backward(st, *res, do, dht)


_chunked.defvjp(_chunked_fwd_rule, _chunked_bwd_rule)


# --- recurrent ------------------------------------------------------------------------------


def _recurrent_forward(st: _Static, q, k, v, g, g_gamma, h0, marks):
    B, T, H, K = q.shape
    V = v.shape[-1]
    Kp, Vp = padded_dim(K), padded_dim(V)
    if g is not None:
        mode, gate = "g", jnp.transpose(_total_gate(g, g_gamma), (0, 2, 1))
    elif g_gamma is not None:
        mode, gate = "gamma", jnp.broadcast_to(g_gamma.astype(jnp.float32)[:, None], (H, 16))
    else:
        mode, gate = "none", None
    o, ht = recurrent_fwd(
        pad_axis(q, 3, Kp), pad_axis(k, 3, Kp), pad_axis(v, 3, Vp), gate, _pad_state(h0, Kp, Vp),
        scale=st.scale, gate_mode=mode, block_sizes=st.block_sizes, interpret=st.interpret,
        resets=marks if st.packing == "resets" else None,
        edges=document_edges(marks) if st.packing == "docs" else None, num_docs=st.num_docs,
    )
    return o[..., :V], ht[:, :, :K, :V]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrent(st, q, k, v, g, g_gamma, h0, marks):
    o, ht = _recurrent_forward(st, q, k, v, g, g_gamma, h0, marks)
    return o, (ht if st.output_final_state else None)


def _recurrent_fwd_rule(st, q, k, v, g, g_gamma, h0, marks):
    o, ht = _recurrent_forward(st, q, k, v, g, g_gamma, h0, marks)
    return (o, ht if st.output_final_state else None), (q, k, v, g, g_gamma, h0, marks)


def _recurrent_docs_backward(st: _Static, q, k, v, g, g_gamma, h0, docs, do, dht):
    """Per-document gradients of the recurrent form: the chunked backward with chunk_docs on a
    copy aligned to chunks (module docstring), the total gate per step (zero on padding)."""
    aligned = align(docs, st.num_docs, st.block_sizes.chunk)
    gate = None
    if g is not None or g_gamma is not None:
        gate = (_total_gate(g, g_gamma) if g is not None
                else jnp.broadcast_to(g_gamma.astype(jnp.float32), q.shape[:3]))
        gate = to_aligned(gate, aligned)
    st_aligned = dataclasses.replace(st, gate_grad=st.gate_grad and gate is not None,
                                     g_dtype=jnp.dtype(jnp.float32), g_gamma_dtype=None)
    dq, dk, dv, dgate, _, dh0, _ = _backward(
        st_aligned, *(to_aligned(x, aligned) for x in (q, k, v)), gate, None, h0,
        aligned.chunk_docs, to_aligned(do, aligned), dht)
    dq, dk, dv = (from_aligned(x, aligned) for x in (dq, dk, dv))
    dgate = None if gate is None else from_aligned(dgate, aligned)
    dg = None if g is None else dgate.astype(st.g_dtype)
    dgg = None if g_gamma is None else jnp.sum(dgate, axis=(0, 1)).astype(st.g_gamma_dtype)
    return dq, dk, dv, dg, dgg, dh0, None


def _recurrent_bwd_rule(st, res, cts):
    # The recurrent and chunked forms compute the same function: the chunked backward kernels
    # serve both (decoding rarely differentiates; a short prompt pads to one chunk).
    do, dht = cts
    if st.packing == "docs":
        return _recurrent_docs_backward(st, *res, do, dht)
    return _backward(st, *res, do, dht)


_recurrent.defvjp(_recurrent_fwd_rule, _recurrent_bwd_rule)


# --- public ---------------------------------------------------------------------------------


def _is_constant(x) -> bool:
    return x is None or not isinstance(x, jax.core.Tracer)


def _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, chunk,
            gate_grad=None, packing="none", num_docs=0):
    K, V = q.shape[-1], v.shape[-1]
    check_head_dims(K, V)
    if jnp.dtype(q.dtype) not in DTYPES:
        raise TypeError(
            f"the Pallas kernel takes bfloat16, float16 or float32 inputs, got {q.dtype=}")
    dims = dict(head_dim_k=K, head_dim_v=V, dtype=q.dtype)
    block_sizes = (block_sizes or BlockSizes.get_default(**dims, chunk=chunk)).for_call(**dims)
    if gate_grad is None:
        # A gate held as a constant (numpy, or a concrete array outside any trace) cannot be
        # differentiated: skip its gradient (lightning attention's g_gamma).
        gate_grad = not (_is_constant(g) and _is_constant(g_gamma))
    return _Static(
        scale=float(scale),
        output_final_state=bool(output_final_state),
        block_sizes=block_sizes,
        interpret=default_interpret() if interpret is None else bool(interpret),
        gate_grad=bool(gate_grad),
        g_dtype=None if g is None else jnp.dtype(g.dtype),
        g_gamma_dtype=None if g_gamma is None else jnp.dtype(g_gamma.dtype),
        packing=packing,
        num_docs=num_docs,
    )


def _scale_q(q, scale):
    """A traced scale cannot be a kernel constant: fold it into q (XLA differentiates it)."""
    if isinstance(scale, jax.core.Tracer):
        return (q * scale).astype(q.dtype), 1.0
    return q, scale


def _check_marks(name, x, shape, layout, kinds):
    """An integer (or, for `kinds` "b", bool) array of `shape`; returns it as int32."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if jnp.dtype(x.dtype).kind not in kinds:
        raise TypeError(f"{name} must be an {'integer or bool' if 'b' in kinds else 'integer'} "
                        f"array, got {name}.dtype={x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)}, "
                         f"got {name}.shape={tuple(x.shape)}")
    return jnp.asarray(x).astype(jnp.int32)


def _check_num_docs(num_docs, q, initial_state):
    if (not isinstance(num_docs, numbers.Integral) or isinstance(num_docs, bool)
            or num_docs < 1):
        raise ValueError(f"num_docs must be an int >= 1 with per-document states, got "
                         f"{num_docs=!r}")
    if q.shape[0] != 1:
        raise ValueError(f"per-document states pack documents into one row: the batch must be "
                         f"1, got {q.shape=}")
    if initial_state is not None and initial_state.shape[0] != num_docs:
        raise ValueError(f"initial_state must be [num_docs, H, K, V] with {num_docs=}, got "
                         f"{initial_state.shape=}")
    return int(num_docs)


def _packing(q, g_gamma, initial_state, resets, docs, num_docs, *, chunked):
    """(packing mode, int32 marks or None, num_docs) of validated packing arguments."""
    docs_name = "chunk_docs" if chunked else "docs"
    if resets is not None and docs is not None:
        raise ValueError(f"give resets or {docs_name}, not both")
    B, T = q.shape[:2]
    if resets is not None:
        marks = _check_marks("resets", resets, (B, T), "[B, T]", "biu")
        if num_docs:
            raise ValueError(f"num_docs goes with {docs_name}, not with resets; got {num_docs=}")
        return "resets", marks, 0
    if docs is None:
        if num_docs:
            raise ValueError(f"num_docs needs {docs_name}, got {num_docs=} and {docs_name}=None")
        return "none", None, 0
    num_docs = _check_num_docs(num_docs, q, initial_state)
    if not chunked:
        return "docs", _check_marks("docs", docs, (T,), "[T]", "iu"), num_docs
    if getattr(docs, "ndim", None) != 1 or not docs.shape[0] or T % docs.shape[0]:
        raise ValueError(f"chunk_docs must be [NT] with NT dividing T (the kernel's chunk is "
                         f"T // NT), got chunk_docs.shape={getattr(docs, 'shape', None)}, "
                         f"{q.shape=}")
    chunk = T // docs.shape[0]
    if not is_pow2(chunk) or not 16 <= chunk <= MAX_CHUNK:
        raise ValueError(f"the chunk T // NT must be a power of two in [16, {MAX_CHUNK}], got "
                         f"{chunk} ({q.shape=}, chunk_docs.shape={docs.shape})")
    if g_gamma is not None:
        raise ValueError("with chunk_docs pass the total per-step gate as g (zero on padding "
                         "rows) and g_gamma=None: a constant decay would decay padding rows")
    return "docs", _check_marks("chunk_docs", docs, docs.shape, "[NT]", "iu"), num_docs


def simple_gla(q, k, v, g=None, g_gamma=None, *, scale=None, initial_state=None,
               output_final_state=False, block_sizes: BlockSizes | None = None, chunk=64,
               resets=None, chunk_docs=None, num_docs: int = 0, gate_grad: bool | None = None,
               interpret=None):
    """Chunked simple GLA on the Pallas kernels (differentiable).

    Returns `(o [B, T, H, V] in q.dtype, final_state [B, H, K, V] float32 or None)`.
    `block_sizes` overrides the defaults (`chunk` is used only when it is None).
    Packed documents (module docstring; at most one): `resets [B, T]` bool, True where a
    document starts; or `chunk_docs [NT]` int32 with `num_docs` on inputs aligned to chunks
    (B = 1, g the total gate, g_gamma None; the chunk is T // NT, and block_sizes, if given,
    must have it), initial and final states `[num_docs, H, K, V]`.
    gate_grad: None = a gate gets a gradient when it is traced; False = no gate-gradient work
    (zeros); True = always.
    """
    packing, marks, num_docs = _packing(q, g_gamma, initial_state, resets, chunk_docs, num_docs,
                                        chunked=True)
    if packing == "docs":
        chunk = q.shape[1] // chunk_docs.shape[0]
        if block_sizes is not None and block_sizes.chunk != chunk:
            raise ValueError(f"with chunk_docs the chunk is T // NT = {chunk}, got "
                             f"block_sizes.chunk={block_sizes.chunk}")
    q, scale = _scale_q(q, q.shape[-1] ** -0.5 if scale is None else scale)
    st = _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, chunk,
                 gate_grad, packing, num_docs)
    g = None if g is None else jnp.asarray(g)
    g_gamma = None if g_gamma is None else jnp.asarray(g_gamma)
    return _chunked(st, q, k, v, g, g_gamma, initial_state, marks)


def simple_gla_recurrent(q, k, v, g=None, g_gamma=None, *, scale=None, initial_state=None,
                         output_final_state=False, resets=None, docs=None, num_docs: int = 0,
                         block_sizes: BlockSizes | None = None, interpret=None):
    """Recurrent simple GLA on the Pallas kernel (decoding); gradients via the chunked backward.

    Packed documents (module docstring; at most one): `resets [B, T]` bool, True where a
    document starts; or `docs [T]` int32 (the document of every step, non-decreasing from 0)
    with `num_docs` (B = 1), initial and final states `[num_docs, H, K, V]`.
    """
    packing, marks, num_docs = _packing(q, g_gamma, initial_state, resets, docs, num_docs,
                                        chunked=False)
    q, scale = _scale_q(q, q.shape[-1] ** -0.5 if scale is None else scale)
    st = _static(q, v, g, g_gamma, scale, output_final_state, block_sizes, interpret, 64,
                 None, packing, num_docs)
    g = None if g is None else jnp.asarray(g)
    g_gamma = None if g_gamma is None else jnp.asarray(g_gamma)
    return _recurrent(st, q, k, v, g, g_gamma, initial_state, marks)
