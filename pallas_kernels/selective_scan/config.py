"""Block sizes and launch parameters of the selective scan kernels."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels._common import is_pow2, next_pow2

# Largest state size the kernels take (mamba_ssm's MAX_DSTATE).
MAX_N = 256
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def unsupported(*, state_size: int, dtype) -> str | None:
    """Why the selective-scan kernels cannot take these inputs, or None when they can."""
    if state_size > MAX_N:
        return f"the selective-scan kernels take a state size N <= {MAX_N}, got N={state_size}"
    if jnp.dtype(dtype) not in DTYPES:
        return (f"the selective-scan kernels compute in float32 from float32, bfloat16 or "
                f"float16 inputs, got {jnp.dtype(dtype)}")
    return None
# State elements one thread of the forward kernels holds by default (4 channels x N = 16).
_FWD_ELEMENTS_PER_THREAD = 64
# Default state elements per thread in a backward sub-chunk (sub x N).
_BWD_SUB_ELEMENTS = 64
# Chunks for `get_default` given the input's shape, longest first, and the programs a default
# chunk must leave (measured on an H200 at B=4, D=2048, N=16, T=1024..8192, 2026-12-03; RESULTS.md).
# Forward: about one wave of pass-2 programs (132 SMs x 4 resident programs of 2 warps at 255
# registers); at every T the chunk leaving 512 programs beat the longer and shorter ones.
# Backward (one-warp programs, ~8 resident per SM): the chunk leaving 4096 programs beat the
# longer ones at T=1024 (64 over 128 over 256) and 2048 (128 over 256); at 4096 (256) 128 was
# no faster.
_FWD_CHUNKS = (512, 256, 128, 64)
_FWD_MIN_PROGRAMS = 512
_BWD_CHUNKS = (256, 128, 64)
_BWD_MIN_PROGRAMS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
    """Tiling of the time-parallel selective-scan kernels (see `fwd.py` and `bwd.py`).

    Time is split into chunks that run as separate programs; the state entering a chunk is
    passed between chunks through each chunk's end state and total decay `exp(A sum dt)`.

    Forward (and the backward's local reverse pass, which has the same shape):
      block_d: channels per program (power of two). The state tile is `[N, block_d]`, channels
        across threads: at `block_d = 4 * 32 * num_warps` each thread holds 4 channels x all N
        states, so the readout over N needs no shuffles and per-channel work is not repeated.
      chunk: time steps per program (multiple of `unroll`).
      unroll: time steps per loop iteration, written out in Python (independent loads and exps).
      prefetch: load the next iteration's rows while computing the current one.
      num_warps, num_stages: Triton launch parameters.
      checkpoint: the forward saves the state every `checkpoint` steps for the backward
        (multiple of `unroll` and of `sub`).
      block_d_carry: channels per program of the walk that carries the state across chunks
        (`fwd._carry_kernel`; used up to `block_d`). Its NC - 1 steps are serial, so narrower
        blocks (more programs) may pay; the default is the measured one, the passes' 256.

    Backward (`*_bwd`): one program per (batch, channel block, `chunk_bwd` steps); the state is
    held as N rows of `block_d_bwd` channels. At `block_d_bwd = 32 * num_warps_bwd` each thread
    holds one channel x all N; with one warp the sums over the block's channels (dB, dC) are
    warp shuffles without shared memory.
      chunk_bwd: time steps per program (multiple of `checkpoint`).
      sub: steps whose states are recomputed into registers at a time, then walked backwards.
        When `checkpoint > sub`, the state at a sub-chunk's start is recomputed from the
        checkpoint (on average (checkpoint / sub - 1) / 2 extra steps per step). Registers bound
        it: a sub-chunk keeps `sub` states of N per thread.
    """

    # Without a shape: chunk 64 / chunk_bwd 256, the fastest of the variants measured on an H100
    # at B=4, T=4096, D=2048, N=16 (benchmarks/gpu/selective_scan_tune.py, 2026-11-24). The op
    # calls `get_default` with the input's shape, which picks both chunks from the problem's size.
    block_d: int = 256
    chunk: int = 64
    unroll: int = 4
    prefetch: bool = False
    num_warps: int = 2
    num_stages: int = 1
    checkpoint: int = 8
    block_d_carry: int = 256
    block_d_bwd: int = 32
    chunk_bwd: int = 256
    sub: int = 4
    num_warps_bwd: int = 1
    num_stages_bwd: int = 1

    def __post_init__(self):
        for name in ("block_d", "unroll", "block_d_carry", "block_d_bwd", "sub"):
            value = getattr(self, name)
            if not is_pow2(value):
                raise ValueError(f"{name} must be a power of two, got {name}={value!r}")
        for name in ("num_warps", "num_warps_bwd"):
            value = getattr(self, name)
            if not is_pow2(value) or value > 16:
                raise ValueError(f"{name} must be a power of two <= 16, got {name}={value!r}")
        for name in ("num_stages", "num_stages_bwd", "chunk", "checkpoint", "chunk_bwd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")
        if self.chunk % self.unroll:
            raise ValueError(
                f"chunk must be a multiple of unroll, got chunk={self.chunk}, unroll={self.unroll}")
        if self.checkpoint % self.unroll or self.checkpoint % self.sub:
            raise ValueError(
                f"checkpoint must be a multiple of unroll and sub, got "
                f"checkpoint={self.checkpoint}, unroll={self.unroll}, sub={self.sub}"
            )
        if self.chunk_bwd % self.checkpoint:
            raise ValueError(
                f"chunk_bwd must be a multiple of checkpoint, got chunk_bwd={self.chunk_bwd}, "
                f"checkpoint={self.checkpoint}"
            )

    @classmethod
    def get_default(cls, *, state_size: int, batch: int | None = None,
                    seq_len: int | None = None, channels: int | None = None, groups: int = 1,
                    **overrides) -> BlockSizes:
        """Defaults for state size N = `state_size`: the channel blocks shrink as N grows;
        `overrides` replace fields.

        batch, seq_len, channels: the input's `[batch, seq_len, channels]`; when all are given,
          `chunk` and `chunk_bwd` (unless overridden) are the longest of `_FWD_CHUNKS` /
          `_BWD_CHUNKS` that still leave `_FWD_MIN_PROGRAMS` / `_BWD_MIN_PROGRAMS` programs
          (else the shortest): longer chunks carry fewer states between chunks, but each
          program's steps are a serial chain, and too few programs leave SMs idle. `groups`
          (of B and C) is accepted for the common `get_default(**dims)` / `for_call(**dims)`
          shape and does not change defaults.
        """
        del groups
        if not 1 <= state_size <= MAX_N:
            raise ValueError(f"state size N must be in [1, {MAX_N}], got {state_size=}")
        n = next_pow2(state_size)
        warps = overrides.get("num_warps", cls.__dataclass_fields__["num_warps"].default)
        per_thread = max(1, min(4, _FWD_ELEMENTS_PER_THREAD // n))
        sub = max(1, min(4, _BWD_SUB_ELEMENTS // n))
        unroll = overrides.get("unroll", cls.__dataclass_fields__["unroll"].default)
        sizes = dict(block_d=per_thread * 32 * warps, sub=sub, checkpoint=max(2 * sub, unroll))
        sizes.update(overrides)
        if None not in (batch, seq_len, channels):

            def field(name):
                return sizes.get(name, cls.__dataclass_fields__[name].default)

            def longest(name, chunks, block_d, multiple_of, min_programs):
                chunks = [c for c in chunks if c % multiple_of == 0]
                if name in overrides or not chunks:  # none fits: the field's default says why
                    return
                blocks = batch * -(-channels // block_d)
                sizes[name] = next(
                    (c for c in chunks if blocks * -(-seq_len // c) >= min_programs), chunks[-1])

            longest("chunk", _FWD_CHUNKS, field("block_d"), field("unroll"), _FWD_MIN_PROGRAMS)
            longest("chunk_bwd", _BWD_CHUNKS, field("block_d_bwd"), field("checkpoint"),
                    _BWD_MIN_PROGRAMS)
        return cls(**sizes)

    def for_call(self, *, state_size: int, batch: int, seq_len: int, channels: int,
                 groups: int = 1) -> BlockSizes:
        """These sizes fitted to one call: the channel blocks clamped to the channels of one
        group of B and C (`channels // groups`, rounded up to a power of two)."""
        del state_size, batch, seq_len
        limit = next_pow2(channels // groups)
        return dataclasses.replace(
            self, block_d=min(self.block_d, limit), block_d_carry=min(self.block_d_carry, limit),
            block_d_bwd=min(self.block_d_bwd, limit),
        )
