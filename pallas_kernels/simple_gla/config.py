"""Block sizes and launch parameters of the simple GLA kernels."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels._common import is_pow2, padded_dim

MAX_HEAD_DIM = 256
MAX_CHUNK = 256
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def unsupported(*, head_dim_k: int, head_dim_v: int, dtype) -> str | None:
    """Why the simple GLA kernels cannot take these inputs, or None when they can."""
    if head_dim_k > MAX_HEAD_DIM or head_dim_v > MAX_HEAD_DIM:
        return (f"the simple GLA kernels take head dims K, V <= {MAX_HEAD_DIM}, got "
                f"K={head_dim_k}, V={head_dim_v}")
    if jnp.dtype(dtype) not in DTYPES:
        return (f"the simple GLA kernels take bfloat16, float16 or float32 q, k, v, got "
                f"{jnp.dtype(dtype)}")
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
    """Tiles of the chunked kernels (all powers of two).

    chunk: rows of one chunk (the time tile every kernel loops over), 16..256.
    block_v: V tile of a forward program (grid (V/block_v, B, H)).
    block_k_dq, block_k_dk: K tiles of the backward sweeps for dq (forward in time) and dk
      (backward in time); block_v_dv: V tile of the dv sweep (backward in time).
    fuse_bwd: run the three backward sweeps as one launch (more programs in flight at once)
      instead of three.
    num_warps / num_stages: Triton launch parameters of the forward and backward kernels
      (None = the defaults chosen from the head dims).
    block_v_recurrent: V tile of the recurrent (decoding) kernel.
    Tiles larger than the padded head dim are clamped to it (`for_call`).
    """

    chunk: int = 64
    block_v: int = 64
    block_k_dq: int = 64
    block_k_dk: int = 64
    block_v_dv: int = 64
    fuse_bwd: bool = False
    num_warps_fwd: int | None = None
    num_stages_fwd: int | None = None
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None
    block_v_recurrent: int = 64
    num_warps_recurrent: int = 4

    def __post_init__(self):
        if not is_pow2(self.chunk) or not 16 <= self.chunk <= 256:
            raise ValueError(f"chunk must be a power of two in [16, 256], got {self.chunk=}")
        for name in ("block_v", "block_k_dq", "block_k_dk", "block_v_dv", "block_v_recurrent"):
            value = getattr(self, name)
            if not is_pow2(value) or value < 16:
                raise ValueError(f"{name} must be a power of two >= 16, got {name}={value!r}")
        for name in ("num_warps_fwd", "num_warps_bwd", "num_warps_recurrent"):
            value = getattr(self, name)
            if value is not None and (not is_pow2(value) or value > 16):
                raise ValueError(f"{name} must be a power of two <= 16, got {name}={value!r}")
        for name in ("num_stages_fwd", "num_stages_bwd"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 1 <= value <= 8):
                raise ValueError(f"{name} must be an int in [1, 8], got {name}={value!r}")

    @classmethod
    def get_default(cls, *, head_dim_k: int, head_dim_v: int, dtype, **overrides) -> BlockSizes:
        """Defaults for heads `[.., head_dim_k]` / `[.., head_dim_v]` of `dtype`; `overrides`
        replace fields (e.g. `chunk`, which the launch parameters depend on).

        State tiles of at most 128 x 64 float32 (64 registers per thread at 4 warps); 8 warps
        once a head dim exceeds 128 or the chunk exceeds 64. Shared memory holds num_stages
        copies of the loaded [chunk, head dim] tiles plus the dot operands: past 128 (or with
        chunks over 64) one stage, and float32 inputs with 256-wide heads also take 32-wide
        state tiles, to stay under the H100's 227 KB.
        """
        Kp, Vp = padded_dim(head_dim_k), padded_dim(head_dim_v)
        chunk = overrides.get("chunk", cls.__dataclass_fields__["chunk"].default)
        big = max(Kp, Vp) > 128 or chunk > 64
        tile = 32 if (big and jnp.dtype(dtype).itemsize >= 4 and max(Kp, Vp) > 128) else 64
        sizes = dict(
            block_v=min(tile, Vp),
            block_k_dq=min(tile, Kp),
            block_k_dk=min(tile, Kp),
            block_v_dv=min(tile, Vp),
            num_warps_fwd=8 if big else 4,
            num_stages_fwd=1 if big else 3,
            num_warps_bwd=8 if big else 4,
            num_stages_bwd=1 if big else 3,
        )
        return cls(**(sizes | overrides))

    def for_call(self, *, head_dim_k: int, head_dim_v: int, dtype) -> BlockSizes:
        """These sizes fitted to one call: tiles clamped to the padded head dims, unset launch
        parameters filled from the defaults for this chunk."""
        Kp, Vp = padded_dim(head_dim_k), padded_dim(head_dim_v)
        default = BlockSizes.get_default(head_dim_k=Kp, head_dim_v=Vp, dtype=dtype,
                                         chunk=self.chunk)
        return dataclasses.replace(
            self,
            block_v=min(self.block_v, Vp),
            block_k_dq=min(self.block_k_dq, Kp),
            block_k_dk=min(self.block_k_dk, Kp),
            block_v_dv=min(self.block_v_dv, Vp),
            block_v_recurrent=min(self.block_v_recurrent, Vp),
            num_warps_fwd=self.num_warps_fwd or default.num_warps_fwd,
            num_stages_fwd=self.num_stages_fwd or default.num_stages_fwd,
            num_warps_bwd=self.num_warps_bwd or default.num_warps_bwd,
            num_stages_bwd=self.num_stages_bwd or default.num_stages_bwd,
        )


def check_head_dims(K: int, V: int) -> None:
    """The kernels hold whole `[chunk, K]` rows: K and V up to 256."""
    if K > MAX_HEAD_DIM:
        raise ValueError(f"the Pallas kernel supports K <= {MAX_HEAD_DIM}, got q.shape[-1]={K}")
    if V > MAX_HEAD_DIM:
        raise ValueError(f"the Pallas kernel supports V <= {MAX_HEAD_DIM}, got v.shape[-1]={V}")
