"""Simple GLA: linear attention with one scalar log-decay per head and step (FLA's `chunk_simple_gla`).

`S_t = exp(g_t + g_gamma) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`, with a data-dependent
gate `g: [B, T, H]` and/or a constant per-head decay `g_gamma: [H]` (RetNet, Lightning Attention).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops import _checks as checks
from jaxla.ops import packing as pk
from jaxla.ops._dispatch import dispatch, kernel_refusal
from jaxla.ops._sharding import batch_sharded_call
from jaxla.ops.reference.simple_gla import chunk_simple_gla, naive_simple_gla


def _validate(q, k, v, g, g_gamma, initial_state, scale, segment_ids, cu_seqlens):
    """Check every argument; returns (scale, packing)."""
    checks.check_rank("q", q, 4, "[B, T, H, K]")
    checks.check_rank("k", k, 4, "[B, T, H, K]")
    checks.check_rank("v", v, 4, "[B, T, H, V]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K], got {q.shape=}, {k.shape=}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in B, T, H: {q.shape=}, {v.shape=}")
    checks.check_same_dtype(q=q, k=k, v=v)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got {q.shape=}")
    if g is not None:
        checks.check_shape("g", g, (B, T, H), "[B, T, H]")
        checks.check_nonpositive("g", g)
    if g_gamma is not None:
        checks.check_shape("g_gamma", g_gamma, (H,), "[H]")
        checks.check_nonpositive("g_gamma", g_gamma)
    packing = pk.resolve(segment_ids, cu_seqlens, B, T)
    states = pk.state_batch(packing, B)
    layout = "[N, H, K, V]" if states != B else "[B, H, K, V]"
    checks.check_state("initial_state", initial_state, (states, H, K, V), layout, q.dtype)
    scale = checks.check_scale(scale, default=K**-0.5)
    checks.check_finite(q=q, k=k, v=v, g=g, g_gamma=g_gamma, initial_state=initial_state)
    return scale, packing


def _kernel_refuses(q, v):
    return lambda: kernel_refusal("simple_gla", head_dim_k=q.shape[-1], head_dim_v=v.shape[-1],
                                  dtype=q.dtype)


def total_gate(q, g, g_gamma):
    """The per-step log-decay `[B, T, H]` in float32 (float64 for float64 inputs)."""
    cd = checks.compute_dtype(
        q.dtype, None if g is None else g.dtype, None if g_gamma is None else g_gamma.dtype
    )
    total = jnp.zeros(q.shape[:3], cd)
    if g is not None:
        total = total + g.astype(cd)
    if g_gamma is not None:
        total = total + g_gamma.astype(cd)
    return total


def simple_gla(
    q,
    k,
    v,
    g=None,
    *,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    chunk_size: int = 64,
    implementation: checks.Implementation | None = None,
):
    """Chunked simple GLA.

    Args:
      q, k: `[B, T, H, K]`; v: `[B, T, H, V]`; all one float dtype.
      g: optional `[B, T, H]` data-dependent log-decays (<= 0).
      g_gamma: optional `[H]` constant log-decay per head (<= 0). With neither, no decay.
      scale, initial_state, output_final_state, segment_ids, cu_seqlens, chunk_size,
        implementation: as in `jaxla.ops.gla`. "pallas" (the default on GPU) takes bf16/f16/f32
        inputs with K, V <= 256; it uses `chunk_size` as its chunk; a constant gate (numpy
        g_gamma, as lightning attention passes) gets no gradient work in the backward.

    Returns:
      `(o [B, T, H, V] in q.dtype, final_state float32 or None)`, the state `[B, H, K, V]`
      (`[N, H, K, V]` with cu_seqlens).
    """
    scale, packing = _validate(q, k, v, g, g_gamma, initial_state, scale, segment_ids,
                               cu_seqlens)
    checks.check_chunk_size(chunk_size)

    def pallas():
        from pallas_kernels import simple_gla as kernels

        if packing is not None and packing.per_document_states:
            C = min(chunk_size, kernels.MAX_CHUNK)
            aligned = pk.align(packing.docs, packing.num_docs, C)
            # Padding between aligned documents must not decay: the gate becomes per step.
            gate = pk.to_aligned(total_gate(q, g, g_gamma).astype(jnp.float32), aligned)
            o, final = kernels.simple_gla(
                *(pk.to_aligned(x, aligned) for x in (q, k, v)), gate, None, scale=scale,
                initial_state=initial_state, output_final_state=output_final_state,
                chunk_docs=aligned.chunk_docs, num_docs=packing.num_docs,
                gate_grad=not (_constant(g) and _constant(g_gamma)))
            return pk.from_aligned(o, aligned), final

        def kernel(q, k, v, g, g_gamma, initial_state, resets):
            return kernels.simple_gla(
                q, k, v, g, g_gamma, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, chunk=chunk_size, resets=resets)

        resets = None if packing is None else packing.resets
        return batch_sharded_call(kernel, (q, k, v, g, g_gamma, initial_state, resets),
                                  (True, True, True, True, False, True, True))

    def xla():
        o, final = chunk_simple_gla(q, k, v, total_gate(q, g, g_gamma), scale=scale,
                                    initial_state=initial_state, chunk_size=chunk_size,
                                    packing=packing)
        return o, (final if output_final_state else None)

    def naive():
        o, final = naive_simple_gla(q, k, v, total_gate(q, g, g_gamma), scale=scale,
                                    initial_state=initial_state, packing=packing)
        return o, (final if output_final_state else None)

    return dispatch("simple_gla", implementation, pallas=pallas, xla=xla, naive=naive,
                    kernel_refuses=_kernel_refuses(q, v))


def _constant(x) -> bool:
    return x is None or checks.is_concrete(x)


def simple_gla_recurrent(
    q,
    k,
    v,
    g=None,
    *,
    g_gamma=None,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    implementation: checks.Implementation | None = None,
):
    """Simple GLA in its recurrent form (decoding, short inputs); arguments as `simple_gla`.

    "pallas" runs one step per loop iteration in a kernel (its gradients use the chunked
    backward kernels); "xla" and "naive" both run the step-by-step spec.
    """
    scale, packing = _validate(q, k, v, g, g_gamma, initial_state, scale, segment_ids,
                               cu_seqlens)

    def pallas():
        from pallas_kernels import simple_gla as kernels

        def kernel(q, k, v, g, g_gamma, initial_state, resets, docs):
            return kernels.simple_gla_recurrent(
                q, k, v, g, g_gamma, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, resets=resets, docs=docs,
                num_docs=0 if packing is None else packing.num_docs)

        resets = None if packing is None else packing.resets
        docs = None if packing is None else packing.docs
        return batch_sharded_call(kernel, (q, k, v, g, g_gamma, initial_state, resets, docs),
                                  (True, True, True, True, False, True, True, False))

    def naive():
        o, final = naive_simple_gla(q, k, v, total_gate(q, g, g_gamma), scale=scale,
                                    initial_state=initial_state, packing=packing)
        return o, (final if output_final_state else None)

    return dispatch("simple_gla_recurrent", implementation, pallas=pallas, xla=naive,
                    naive=naive, kernel_refuses=_kernel_refuses(q, v))
