"""Packed documents in the selective-scan kernels against the float64 spec.

`resets` (segment_ids) and per-document mode (`docs`, cu_seqlens) at small block sizes, so that
document starts fall on and inside every edge the kernels have: forward chunks (the carry's keep
flags), backward chunks (pass 1's reverse carries), checkpoints and sub-chunks (the backward's
recomputation), the masked steps past T. Documents of one step (the first, the last, one right
after a chunk edge), shorter than a chunk, and one many chunks long. Outputs, final states (one
per document in per-document mode) and every gradient, with random cotangents for the output
and the final state; bf16 and float32, with and without initial states, some under
`jax_enable_x64`. Each case has a compiled `gpu` twin (same assertions).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.ops import packing as pk
from jaxla.testing import assert_close, outputs_and_grads, random_like
from pallas_kernels.selective_scan import BlockSizes, selective_scan
from tests.inputs import selective_scan_inputs

T = 99  # not a multiple of unroll or sub: the last iteration of either runs past T
# Starts on a checkpoint (8), on a sub-chunk inside a checkpoint (12), on a forward chunk edge
# (16) and one step after it (17), on a backward chunk edge (32) and one after it (33), inside
# chunks (35) and at the last step (98): one-step documents at 0, 16, 32 and 98; 35..97 spans
# forward chunks 48..95 and backward chunk 64..95, which it passes through whole.
CUTS = (1, 8, 12, 16, 17, 32, 33, 35, 98)
# Forward chunk 16, backward chunk 32, checkpoint 8 of two sub-chunks of 4 (the backward
# advances from a checkpoint); the carry walk on narrower blocks than the passes.
SMALL = BlockSizes(block_d=8, chunk=16, unroll=4, checkpoint=8, block_d_carry=4, block_d_bwd=8,
                   chunk_bwd=32, sub=4)
# One warp of 32 channels in the backward (lane-shuffle dB/dC sums), checkpoint == sub (no
# advance), prefetched rows in the forward, chunks of 8 / 16.
WARP = BlockSizes(block_d=16, chunk=8, unroll=2, checkpoint=8, prefetch=True, block_d_carry=8,
                  block_d_bwd=32, chunk_bwd=16, sub=8)

# (name, kind, dtype, D, N, groups, initial state, x64, block sizes)
CASES = [
    ("resets-f32-h0-x64", "segment_ids", jnp.float32, 16, 4, None, True, True, SMALL),
    ("resets-bf16", "segment_ids", jnp.bfloat16, 24, 6, 2, False, False, SMALL),
    ("resets-f32-warp", "segment_ids", jnp.float32, 32, 4, None, True, False, WARP),
    ("docs-f32", "cu_seqlens", jnp.float32, 16, 4, 2, False, False, SMALL),
    ("docs-bf16-h0-x64", "cu_seqlens", jnp.bfloat16, 24, 6, None, True, True, SMALL),
    ("docs-f32-h0-warp", "cu_seqlens", jnp.float32, 32, 4, 2, True, False, WARP),
]
PARAMS = [pytest.param(c, True, id=f"{c[0]}-interpret") for c in CASES] + [
    pytest.param(c, False, id=f"{c[0]}-gpu", marks=pytest.mark.gpu) for c in CASES]


def _random_cuts(rng, T: int, n: int) -> tuple[int, ...]:
    return tuple(sorted({int(c) for c in rng.integers(1, T, n)}))


def _segment_ids(cuts, T: int):
    return np.cumsum(np.isin(np.arange(T), cuts)).astype(np.int32)


def check_packed(rng, kind, dtype, D, N, groups, with_h0, *, interpret, block_sizes, T=T,
                 cuts=CUTS, batch=2):
    """The kernel with `resets` (segment_ids; row 0 cut at `cuts`, row 1 at random) or `docs`
    (cu_seqlens at `cuts`) against the float64 spec `ops.selective_scan(implementation="naive")`
    with the same packing: output, final state(s) and the gradients of every input."""
    if kind == "segment_ids":
        rows = [cuts] + [_random_cuts(rng, T, 5) for _ in range(batch - 1)]
        packing = dict(segment_ids=jnp.asarray(np.stack([_segment_ids(c, T) for c in rows])))
        kernel_packing = dict(resets=pk.resets_from_segment_ids(packing["segment_ids"]))
        states = batch
    else:
        batch, states = 1, len(cuts) + 1
        cu = jnp.asarray([0, *cuts, T], jnp.int32)
        packing = dict(cu_seqlens=cu)
        kernel_packing = dict(docs=pk.docs_from_cu_seqlens(cu, T), num_docs=states)
    u, delta, _, Bm, Cm, Dv, z, _, _ = selective_scan_inputs(rng, batch, T, D, N,
                                                             groups=groups, dtype=dtype)
    # Slow decays (dt ~ 0.05-0.2, |A| <= 1: exp(dt A) from 0.8 to ~1 per step), so that a state
    # leaking past a document start or a chunk that holds one would show.
    A = jnp.asarray(-rng.uniform(0.01, 1.0, (D, N)), jnp.float32)
    bias = jnp.asarray(rng.uniform(-3.0, -1.5, (D,)), jnp.float32)
    args = [u, delta, A, Bm, Cm, Dv, z, bias]
    if with_h0:
        args.append(jnp.asarray(rng.standard_normal((states, D, N)), jnp.float32))

    def kernel(*a):
        return selective_scan(*a[:7], delta_bias=a[7], delta_softplus=True,
                              initial_state=a[8] if with_h0 else None, block_sizes=block_sizes,
                              interpret=interpret, **kernel_packing)

    def spec(*a):
        return ops.selective_scan(*a[:7], delta_bias=a[7], delta_softplus=True,
                                  initial_state=a[8] if with_h0 else None,
                                  output_final_state=True, implementation="naive", **packing)

    seed = int(rng.integers(1 << 30))
    (out, final), grads = outputs_and_grads(jax.jit(kernel), args, np.random.default_rng(seed))
    replay = np.random.default_rng(seed)  # the cotangents outputs_and_grads drew
    cotangents = jax.tree.map(lambda o: random_like(replay, o), (out, final))
    with jax.enable_x64(True):
        up = [jnp.asarray(x, jnp.float64) for x in args]
        (out_ref, final_ref), vjp = jax.vjp(spec, *up)
        grads_ref = vjp(jax.tree.map(lambda c: jnp.asarray(c, jnp.float64), cotangents))

    assert out.dtype == dtype and out.shape == (batch, T, D)
    assert final.dtype == jnp.float32 and final.shape == (states, D, N)
    bound_dtype = None if dtype == jnp.float32 else dtype
    assert_close(out, out_ref, dtype=bound_dtype, name="out")
    assert_close(final, final_ref, dtype=dtype, name="final_state")
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    for name, x, g, g_ref in zip(names, args, grads, grads_ref, strict=False):
        assert g.dtype == x.dtype and g.shape == x.shape, (name, g.dtype, g.shape)
        assert_close(g, g_ref, dtype=dtype, name="d" + name)


@pytest.mark.parametrize("case, interpret", PARAMS)
def test_packed_matches_spec(rng, case, interpret):
    _, kind, dtype, D, N, groups, with_h0, x64, bs = case
    with jax.enable_x64(x64):
        check_packed(rng, kind, dtype, D, N, groups, with_h0, interpret=interpret,
                     block_sizes=bs)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["segment_ids", "cu_seqlens"])
def test_packed_on_gpu_default_blocks(rng, kind):
    """A GPU-sized shape at the op's default tiles (B/C in 4 groups, bf16, initial states):
    one-step documents at both ends, starts on and next to 64-step edges, 12 at random."""
    T_gpu = 1000
    cuts = tuple(sorted({1, 63, 64, 65, 256, 257, 999} | set(_random_cuts(rng, T_gpu, 12))))
    check_packed(rng, kind, jnp.bfloat16, 512, 16, 4, True, interpret=False, block_sizes=None,
                 T=T_gpu, cuts=cuts)


def test_packing_arguments_are_checked(rng):
    """One clear line for packing arguments that do not fit, before any kernel runs."""
    u, delta, A, Bm, Cm, *_ = selective_scan_inputs(rng, 2, 8, 4, 4)
    docs = jnp.asarray([0, 0, 1, 1, 1, 2, 2, 2], jnp.int32)
    resets = jnp.zeros((2, 8), bool)
    cases = [
        (dict(resets=resets, docs=docs, num_docs=3), ValueError, "resets or docs, not both"),
        (dict(resets=resets[:, :4]), ValueError, r"resets must be \[Bt, T\] = \(2, 8\)"),
        (dict(num_docs=3), ValueError, "num_docs is for per-document mode"),
        (dict(docs=docs, num_docs=3), ValueError, "with a batch of 1"),
    ]
    for kw, error, match in cases:
        with pytest.raises(error, match=match):
            selective_scan(u, delta, A, Bm, Cm, **kw)
    one = [x[:1] for x in (u, delta)] + [A, Bm[:1], Cm[:1]]
    with pytest.raises(ValueError, match="num_docs must be an int >= 1"):
        selective_scan(*one, docs=docs, num_docs=0)
    with pytest.raises(ValueError, match=r"docs must be \[T\] = \(8,\)"):
        selective_scan(*one, docs=docs[:4], num_docs=3)
    with pytest.raises(TypeError, match="docs must be integers"):
        selective_scan(*one, docs=docs.astype(jnp.float32), num_docs=3)
    with pytest.raises(ValueError, match=r"initial_state must be \[num_docs, D, N\]"):
        selective_scan(*one, initial_state=jnp.ones((2, 4, 4)), docs=docs, num_docs=3)
