"""Time-parallel selective scan kernels: chunk edge cases against the float64 spec.

Forward and backward split time into chunks (`BlockSizes.chunk`, `chunk_bwd`) and pass states
between them; the backward recomputes states from checkpoints (`checkpoint`, `sub`). These
cases put the chunk boundaries where they can break: T a multiple of every chunk (no masked
steps), one step past a chunk, T below the forward chunk but above the backward one, sub-chunks
that start 1-3 sub-chunks after their checkpoint, many one-interval chunks (their carry walk on
narrower channel blocks than the passes). Every case runs in Pallas' interpreter; three have a
compiled `gpu` twin (same assertions; GPU compile time is the budget there, the other two differ
only in block arithmetic the interpreter checks).
"""

import jax.numpy as jnp
import pytest

from pallas_kernels.selective_scan import BlockSizes
from tests.kernels.test_selective_scan_kernel import check_against_spec

ALL = (True, True, True, True, True)  # D, z, delta_bias, softplus, initial_state

# (name, T, D, N, groups, (D, z, bias, softplus, h0), block sizes)
CASES = [
    ("exact-multiples", 64, 16, 8, None, ALL,
     BlockSizes(block_d=8, chunk=16, unroll=4, checkpoint=16, chunk_bwd=32, block_d_bwd=8,
                sub=4)),
    ("one-step-past", 17, 8, 4, 1, ALL,
     BlockSizes(block_d=8, chunk=16, unroll=4, checkpoint=8, chunk_bwd=16, block_d_bwd=8,
                sub=4)),
    ("advance-from-checkpoint", 45, 16, 16, 2, (False, False, True, False, True),
     BlockSizes(block_d=16, chunk=32, unroll=8, checkpoint=16, chunk_bwd=32, block_d_bwd=8,
                sub=4)),
    ("short-fwd-long-bwd", 40, 16, 4, None, (False, True, False, True, False),
     BlockSizes(block_d=16, chunk=64, unroll=2, checkpoint=8, chunk_bwd=16, block_d_bwd=16,
                sub=2)),
    # one warp of 32 channels: lane-shuffle dB/dC sums; the carry walk on half the passes' block
    ("many-chunks", 130, 64, 16, 2, ALL,
     BlockSizes(block_d=16, chunk=8, unroll=2, checkpoint=8, block_d_carry=8, chunk_bwd=8,
                block_d_bwd=32, sub=8, prefetch=False)),
]


GPU_TWINS = ("exact-multiples", "one-step-past", "many-chunks")
PARAMS = [pytest.param(c, True, id=f"{c[0]}-interpret") for c in CASES] + [
    pytest.param(c, False, id=f"{c[0]}-gpu", marks=pytest.mark.gpu)
    for c in CASES if c[0] in GPU_TWINS
]


@pytest.mark.parametrize("case, interpret", PARAMS)
def test_time_chunks_match_spec(rng, case, interpret):
    _, T, D, N, groups, opts, bs = case
    check_against_spec(rng, T, D, N, groups, opts, dtype=jnp.float32, interpret=interpret,
                       block_sizes=bs)


@pytest.mark.gpu
@pytest.mark.parametrize("chunk, chunk_bwd", [(64, 256), (256, 512)])
def test_time_chunks_on_gpu_bfloat16(rng, chunk, chunk_bwd):
    """A GPU-sized shape whose T is a multiple of no chunk, default tiles otherwise."""
    bs = BlockSizes.get_default(state_size=16, chunk=chunk, chunk_bwd=chunk_bwd)
    check_against_spec(rng, 1000, 512, 16, 2, ALL, dtype=jnp.bfloat16, interpret=False,
                       block_sizes=bs)
