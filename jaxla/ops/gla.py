"""Gated Linear Attention (Yang et al., 2024): `S_t = diag(exp g_t) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`."""

from __future__ import annotations

from jaxla.ops import _checks as checks
from jaxla.ops import packing as pk
from jaxla.ops._dispatch import dispatch, kernel_refusal
from jaxla.ops._sharding import batch_sharded_call
from jaxla.ops.reference.gla import chunk_gla, naive_gla


def _validate(q, k, v, g, initial_state, scale, segment_ids, cu_seqlens):
    """Check every argument; returns (scale, packing)."""
    checks.check_rank("q", q, 4, "[B, T, H, K]")
    checks.check_rank("k", k, 4, "[B, T, H, K]")
    checks.check_rank("v", v, 4, "[B, T, H, V]")
    checks.check_rank("g", g, 4, "[B, T, H, K]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, T, H, K], got {q.shape=}, {k.shape=}")
    if g.shape != q.shape:
        raise ValueError(f"g must have the shape of q [B, T, H, K], got {q.shape=}, {g.shape=}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must match q in B, T, H: {q.shape=}, {v.shape=}")
    checks.check_same_dtype(q=q, k=k, v=v)
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got {q.shape=}")
    packing = pk.resolve(segment_ids, cu_seqlens, B, T)
    states = pk.state_batch(packing, B)
    layout = "[N, H, K, V]" if states != B else "[B, H, K, V]"
    checks.check_state("initial_state", initial_state, (states, H, K, V), layout, q.dtype)
    scale = checks.check_scale(scale, default=K**-0.5)
    checks.check_nonpositive("g", g)
    checks.check_finite(q=q, k=k, v=v, g=g, initial_state=initial_state)
    return scale, packing


def _kernel_refuses(q, v):
    return lambda: kernel_refusal("gla", head_dim_k=q.shape[-1], head_dim_v=v.shape[-1],
                                  dtype=q.dtype)


def gla(
    q,
    k,
    v,
    g,
    *,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    chunk_size: int = 64,
    implementation: checks.Implementation | None = None,
):
    """Chunked Gated Linear Attention (FLA's `chunk_gla`).

    Args:
      q, k: `[B, T, H, K]`; v: `[B, T, H, V]`; all one float dtype.
      g: `[B, T, H, K]` log-decays (<= 0), e.g. `logsigmoid(x) / 16`; kept in float32 inside.
      scale: multiplies q; defaults to `K ** -0.5`.
      initial_state: optional float32 `[B, H, K, V]` (`[N, H, K, V]` with cu_seqlens).
      output_final_state: also return the float32 final state.
      segment_ids: optional `[B, T]` integers: packed documents, the state restarts where the
        id changes (`jaxla.ops.packing`).
      cu_seqlens: optional `[N + 1]` document offsets with B = 1 (FLA's varlen): one initial
        and one final state per document.
      chunk_size: power of two in [16, 256]; T need not be a multiple (padded inside).
      implementation: "pallas" (kernel; K, V <= 256, float32/bfloat16), "xla" (chunked pure JAX),
        "naive" (step scan, the spec), or None: pallas on GPU when the kernel takes the inputs,
        xla otherwise.

    Returns:
      `(o [B, T, H, V] in q.dtype, final_state float32 or None)`: the final state is
      `[B, H, K, V]` (each row's state after its last token), `[N, H, K, V]` with cu_seqlens.
    """
    scale, packing = _validate(q, k, v, g, initial_state, scale, segment_ids, cu_seqlens)
    checks.check_chunk_size(chunk_size)

    def pallas():
        from pallas_kernels import gla as kernels

        if packing is not None and packing.per_document_states:
            C = min(chunk_size, kernels.MAX_CHUNK)
            aligned = pk.align(packing.docs, packing.num_docs, C)
            o, final = kernels.chunk_gla(
                *(pk.to_aligned(x, aligned) for x in (q, k, v, g)), scale=scale,
                initial_state=initial_state, output_final_state=output_final_state,
                chunk_docs=aligned.chunk_docs, num_docs=packing.num_docs)
            return pk.from_aligned(o, aligned), final

        def kernel(q, k, v, g, initial_state, resets):
            return kernels.chunk_gla(
                q, k, v, g, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, chunk_size=chunk_size, resets=resets)

        resets = None if packing is None else packing.resets
        return batch_sharded_call(kernel, (q, k, v, g, initial_state, resets), (True,) * 6)

    def xla():
        o, final = chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             chunk_size=chunk_size, packing=packing)
        return o, (final if output_final_state else None)

    def naive():
        o, final = naive_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             packing=packing)
        return o, (final if output_final_state else None)

    return dispatch("gla", implementation, pallas=pallas, xla=xla, naive=naive,
                    kernel_refuses=_kernel_refuses(q, v))


def gla_recurrent(
    q,
    k,
    v,
    g,
    *,
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    implementation: checks.Implementation | None = None,
):
    """GLA in its recurrent form, one state update per token (FLA's `fused_recurrent_gla`).

    The form for decoding and short inputs: no chunk padding, O(1) work per token. Same arguments
    and returns as `gla`. "pallas" is one fused kernel walking the tokens (K, V <= 256); "xla" and
    "naive" both run the step recurrence as a `lax.scan`.
    """
    scale, packing = _validate(q, k, v, g, initial_state, scale, segment_ids, cu_seqlens)

    def pallas():
        from pallas_kernels import gla as kernels

        def kernel(q, k, v, g, initial_state, resets, docs):
            return kernels.fused_recurrent_gla(
                q, k, v, g, scale=scale, initial_state=initial_state,
                output_final_state=output_final_state, resets=resets, docs=docs,
                num_docs=0 if packing is None else packing.num_docs)

        resets = None if packing is None else packing.resets
        docs = None if packing is None else packing.docs
        return batch_sharded_call(kernel, (q, k, v, g, initial_state, resets, docs),
                                  (True,) * 6 + (False,))

    def naive():
        o, final = naive_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                             packing=packing)
        return o, (final if output_final_state else None)

    return dispatch("gla_recurrent", implementation, pallas=pallas, xla=naive, naive=naive,
                    kernel_refuses=_kernel_refuses(q, v))
