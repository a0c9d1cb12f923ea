"""Block sizes and launch parameters of the GLA kernels."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels._common import is_pow2, next_pow2, padded_dim

MAX_HEAD_DIM = 256  # K and V (after padding to a power of two) the kernels take
MAX_CHUNK = 128
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def unsupported(*, head_dim_k: int, head_dim_v: int, dtype) -> str | None:
    """Why the GLA kernels cannot take these inputs, or None when they can."""
    if head_dim_k > MAX_HEAD_DIM or head_dim_v > MAX_HEAD_DIM:
        return (f"the GLA kernels take head dims K, V <= {MAX_HEAD_DIM}, got K={head_dim_k}, "
                f"V={head_dim_v}")
    if jnp.dtype(dtype) not in DTYPES:
        return f"the GLA kernels take float32 or bfloat16 q, k, v, got {jnp.dtype(dtype)}"
    return None

# Largest per-channel decay span `-sum(g)` over one chunk for which the intra-chunk attention
# is one matmul of `q * exp(G - G_last/2)` and `k * exp(G_last/2 - G)`, by input dtype: both
# factors then lie in [exp(-span/2), exp(span/2)], far from float32/bfloat16 overflow (e^88).
# Chunks with a larger span take the exact path: a loop over key rows with per-pair exponents,
# all <= 0, each summed from the key row on. The matmul path's exponents carry the rounding of the
# in-chunk cumsum G (~eps * |G|), so its relative error grows with the span: at span 60 it reaches
# 0.3-0.4 of the float32 tolerance (1e-5) in the final state and in dk, dv (interpret mode; the
# GPU's exp adds to it), at span 16 about 0.1. Float32 inputs therefore take the matmul path up
# to span 16 (real gates, such as GLA's log-sigmoid / 16, span ~3 per 64 rows), bfloat16 inputs
# (tolerance 5e-3) up to 60 (log-decay down to about -0.9 per step on average).
DEFAULT_SPAN_LIMIT = {jnp.dtype(jnp.float32): 16.0, jnp.dtype(jnp.bfloat16): 60.0}


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
    """Tiles and Triton launch parameters of the chunked and recurrent GLA kernels.

    chunk: rows per chunk C (power of two in [16, 128]); clipped to `next_pow2(T)` for short inputs.
    block_k_state, block_v_state: the `[BK, BV]` state tile that one program of the chunk-state
      scans (forward states, backward state gradients) carries through all chunks.
    block_k: K tile that the per-chunk output and gradient kernels loop over (fewer live float32
      tiles: the kernels need registers for [C, block_k] tiles, not [C, K]).
    block_v: V tile of the per-chunk output (forward) and gradient (backward) kernels. With
      `block_v < V` the backward writes float32 partial dq, dk, dg per V tile, summed by XLA.
    block_v_recurrent: V tile of the recurrent kernels (each program holds a
      `[K, block_v_recurrent]` float32 state).
    chunks_per_program_fwd, chunks_per_program_bwd: chunks one program of the output (forward) or
      gradient (backward) kernel handles in a loop (power of two; fewer programs, but Triton can
      prefetch the next chunk while computing this one). Clipped to divide the number of chunks.
    span_limit: chunks whose largest decay span `-sum(g)` exceeds this take the exact intra-chunk
      path; None: DEFAULT_SPAN_LIMIT of the input dtype (`span_limit_for`); `inf` forces the
      matmul path, a negative value the exact one.
    num_warps_* / num_stages_*: Triton launch parameters of each kernel family.
    """

    chunk: int = 64
    block_k_state: int = 32
    block_v_state: int = 128
    block_k: int = 32
    block_v: int = 128
    block_v_recurrent: int = 32
    chunks_per_program_fwd: int = 1
    chunks_per_program_bwd: int = 1
    span_limit: float | None = None
    num_warps_state: int = 4
    num_stages_state: int = 3
    num_warps_fwd: int = 4
    num_stages_fwd: int = 2
    num_warps_bwd: int = 4
    num_stages_bwd: int = 2
    num_warps_recurrent: int = 4
    num_stages_recurrent: int = 2

    def __post_init__(self):
        if not is_pow2(self.chunk) or not 16 <= self.chunk <= MAX_CHUNK:
            raise ValueError(
                f"chunk must be a power of two in [16, {MAX_CHUNK}], got {self.chunk=}")
        for name in ("block_k_state", "block_v_state", "block_k", "block_v", "block_v_recurrent"):
            value = getattr(self, name)
            if not is_pow2(value) or not 16 <= value <= MAX_HEAD_DIM:
                raise ValueError(
                    f"{name} must be a power of two in [16, {MAX_HEAD_DIM}], got {value}")
        if not is_pow2(self.chunks_per_program_fwd) or self.chunks_per_program_fwd > 64:
            raise ValueError(f"chunks_per_program_fwd must be a power of two <= 64, "
                             f"got {self.chunks_per_program_fwd}")
        # On an H100 (benchmarks/gpu/gla_tune.py, 2026-11-24) 2 chunks per gradient program gave
        # wrong gradients (error 0.68 against 1 per program) although interpret mode agrees:
        # refused until the cause is found.
        if self.chunks_per_program_bwd != 1:
            raise ValueError(f"chunks_per_program_bwd must be 1 (larger values computed wrong "
                             f"gradients on the GPU), got {self.chunks_per_program_bwd}")
        for name in ("num_warps_state", "num_warps_fwd", "num_warps_bwd", "num_warps_recurrent"):
            value = getattr(self, name)
            if not is_pow2(value) or value > 16:
                raise ValueError(f"{name} must be a power of two <= 16, got {value}")
        for name in ("num_stages_state", "num_stages_fwd", "num_stages_bwd",
                     "num_stages_recurrent"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 8:
                raise ValueError(f"{name} must be an int in [1, 8], got {value}")

    @classmethod
    def get_default(cls, *, head_dim_k: int, head_dim_v: int, seq_len: int | None = None,
                    **overrides) -> BlockSizes:
        """Defaults for heads `[.., head_dim_k]` / `[.., head_dim_v]` (padded to powers of two
        >= 16 here); `overrides` replace fields (e.g. `chunk`). `seq_len` is accepted for the
        common `get_default(**dims)` / `for_call(**dims)` shape and does not change defaults."""
        del seq_len
        K, V = padded_dim(head_dim_k), padded_dim(head_dim_v)
        # Measured on an H100 at B=4, T=4096, H=16, K=V=128 bf16 (benchmarks/gpu/gla_tune.py,
        # 2026-11-24): state tiles of 16 x 128 with 3 stages (0.56 vs 0.71 ms for 32 x 128), and
        # 4-warp per-chunk kernels (output 0.56 vs 0.89 ms, grads 1.65 vs 1.96 ms with 8 warps)
        # although offline Triton 3.6 showed 4 warps spilling: whole op fwd+bwd 2.20 vs 2.54 ms.
        # At FLA's 340M layer (B=8 T=2048 H=4, K=128 V=256; gla_tune, 2026-12-06) 16 x 256 state
        # tiles (0.22 vs 0.40 ms for 16 x 128), an 8-warp output kernel and a 4-warp gradient
        # kernel (0.92 vs 1.64 ms with 8: its V tile is 128 wide as at V=128). Wider keys keep 8
        # warps in both (more live [C, block_k] tiles per program).
        sizes = dict(
            # K/16 * V/block_v_state * B*H state-scan programs: 512 at the anchor shape
            # (K=V=128, B*H = 64), 256 at FLA's 340M layer.
            block_k_state=min(K, 16),
            block_v_state=min(V, 256),
            block_k=min(K, 32),
            block_v=min(V, 128),
            block_v_recurrent=min(V, 32 if K <= 128 else 16),
            num_warps_fwd=8 if max(K, V) > 128 else 4,
            num_warps_bwd=8 if K > 128 else 4,
        )
        return cls(**(sizes | overrides))

    def span_limit_for(self, dtype) -> float:
        """The span limit the kernels apply to inputs of `dtype`."""
        return DEFAULT_SPAN_LIMIT[jnp.dtype(dtype)] if self.span_limit is None else self.span_limit

    def for_call(self, *, head_dim_k: int, head_dim_v: int, seq_len: int) -> BlockSizes:
        """These sizes fitted to one call: tiles clipped to the padded head dims, the chunk to
        `next_pow2(seq_len)` (at least 16)."""
        K, V = padded_dim(head_dim_k), padded_dim(head_dim_v)
        chunk = min(self.chunk, max(16, next_pow2(seq_len)))
        return dataclasses.replace(
            self,
            chunk=chunk,
            block_k_state=min(self.block_k_state, K),
            block_v_state=min(self.block_v_state, V),
            block_k=min(self.block_k, K),
            block_v=min(self.block_v, V),
            block_v_recurrent=min(self.block_v_recurrent, V),
        )
