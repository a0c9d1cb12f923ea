"""Block sizes and launch parameters of the selective scan kernels."""

from __future__ import annotations

import dataclasses

from pallas_kernels._common import next_pow2

# Largest state size the kernels take (mamba_ssm's MAX_DSTATE). The state of one program is
# `[block_d, N]` float32; at N = 256 the default block is 2 channels.
MAX_N = 256
# Default number of state elements one program holds: 4 per thread at 4 warps.
_STATE_ELEMENTS = 512


def _is_pow2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
    """Tiling of the forward and backward selective-scan kernels.

    Both kernels run one program per (batch, block of `block_d` channels) and walk time
    sequentially with a `[block_d, N]` float32 state.

    Forward:
      block_d: channels per program (power of two).
      unroll: time steps per loop iteration, unrolled in Python so that the exps and loads of
        these steps are independent instructions the GPU can overlap (also used by the
        backward's state pass).
      chunk: the forward saves the state every `chunk` steps (multiple of `unroll` and `sub`);
        the backward recomputes the states inside a chunk from its saved start state.
      prefetch: load the next iteration's rows while computing the current one.
      num_warps, num_stages: Triton launch parameters.

    Backward (`*_bwd`):
      block_d_bwd: channels per program.
      sub: steps whose states are recomputed into registers at a time, then walked backwards.
        When `chunk > sub`, a first pass over each chunk writes the states at sub-chunk starts
        to a small per-program buffer (`chunk // sub` states, L2-resident).
      prefetch_bwd: load the rows of the sub-chunk computed next while computing this one
        (both passes).

    Registers bound `sub`: a sub-chunk keeps `2 sub + 1` states of `block_d * N / threads`
    floats, plus (with prefetch) two sub-chunks of input rows. With 4 elements per thread,
    sub = 4 with prefetch needs ~130 registers per thread, sub = 8 with prefetch ~270 (spills).
    """

    block_d: int = 32
    unroll: int = 8
    chunk: int = 64
    prefetch: bool = True
    num_warps: int = 4
    num_stages: int = 1
    block_d_bwd: int = 32
    sub: int = 4
    prefetch_bwd: bool = True
    num_warps_bwd: int = 4
    num_stages_bwd: int = 1

    def __post_init__(self):
        for name in ("block_d", "unroll", "chunk", "block_d_bwd", "sub"):
            value = getattr(self, name)
            if not _is_pow2(value):
                raise ValueError(f"{name} must be a power of two, got {name}={value!r}")
        for name in ("num_warps", "num_warps_bwd"):
            value = getattr(self, name)
            if not _is_pow2(value) or value > 16:
                raise ValueError(f"{name} must be a power of two <= 16, got {name}={value!r}")
        for name in ("num_stages", "num_stages_bwd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        if self.chunk < self.unroll or self.chunk < self.sub:
            raise ValueError(
                f"chunk must be a multiple of unroll and sub, got chunk={self.chunk}, "
                f"unroll={self.unroll}, sub={self.sub}"
            )

    @classmethod
    def get_default(cls, N: int = 16, **overrides) -> BlockSizes:
        """Defaults for state size `N`: the channel block shrinks as N grows (~512 elements)."""
        if not 1 <= N <= MAX_N:
            raise ValueError(f"state size N must be in [1, {MAX_N}], got {N=}")
        block = max(1, min(32, _STATE_ELEMENTS // next_pow2(N)))
        sizes = dict(block_d=block, block_d_bwd=block)
        sizes.update(overrides)
        return cls(**sizes)

    def for_channels(self, channels_per_group: int) -> BlockSizes:
        """Clamp the channel blocks to the channels of one group (rounded up to a power of two)."""
        limit = next_pow2(channels_per_group)
        return dataclasses.replace(
            self, block_d=min(self.block_d, limit), block_d_bwd=min(self.block_d_bwd, limit)
        )
