"""GLA: the chunked XLA path against the step-by-step spec in float64, outputs and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.testing import assert_close, outputs_and_grads
from tests.inputs import GATES, gla_inputs

# (B, T, H, K, V): T = 1, 63, 64, 65, 200; K, V over {16, 48, 64, 100, 128}; H in {1, 3}.
SHAPES = [
    (1, 1, 1, 16, 16),
    (2, 63, 3, 48, 100),
    (1, 64, 1, 64, 64),
    (2, 65, 3, 100, 48),
    (1, 200, 1, 128, 16),
    (2, 200, 3, 16, 128),
]


def _run(impl, q, k, v, g, h0, rng, chunk_size=64):
    if h0 is None:
        fn = lambda q, k, v, g: ops.gla(q, k, v, g, output_final_state=True, chunk_size=chunk_size, implementation=impl)  # noqa: E731
        return outputs_and_grads(fn, (q, k, v, g), rng)
    fn = lambda q, k, v, g, h0: ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=chunk_size, implementation=impl)  # noqa: E731
    return outputs_and_grads(fn, (q, k, v, g, h0), rng)


def _compare(rng, shape, gate, with_h0, chunk_size):
    args = gla_inputs(rng, *shape, gate=gate, dtype=jnp.float64, initial_state=with_h0)
    seed = int(rng.integers(1 << 30))
    (o_ref, h_ref), g_ref = _run("naive", *args, np.random.default_rng(seed))
    (o, h), grads = _run("xla", *args, np.random.default_rng(seed), chunk_size)
    assert o.dtype == jnp.float64 and h.dtype == jnp.float64
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, name="final_state")
    names = ("dq", "dk", "dv", "dg") + (("dh0",) if with_h0 else ())
    for name, a, b in zip(names, grads, g_ref, strict=True):
        assert_close(a, b, name=name)


# Each shape with one gate regime (shape i with GATES[i % 3]: each regime meets two shapes) and
# the initial state on every other shape, so that each regime runs with and without one.
FLOAT64_CASES = [
    pytest.param(shape, GATES[i % len(GATES)], i % 2 == 0,
                 id="B{}-T{}-H{}-K{}-V{}".format(*shape) + f"-{GATES[i % len(GATES)]}-"
                    + ("h0" if i % 2 == 0 else "no_h0"))
    for i, shape in enumerate(SHAPES)
]


@pytest.mark.parametrize("shape,gate,with_h0", FLOAT64_CASES)
def test_chunked_matches_spec_float64(x64, rng, shape, gate, with_h0):
    _compare(rng, shape, gate, with_h0, chunk_size=64)


@pytest.mark.parametrize("chunk_size", [16, 32, 128])
def test_chunk_sizes(x64, rng, chunk_size):
    _compare(rng, (2, 150, 2, 32, 24), "medium", True, chunk_size)


def test_float32_chunked_against_float64_spec(rng):
    """The float32 XLA path lands within the float32 bound of the float64 spec."""
    q, k, v, g, h0 = gla_inputs(rng, 2, 130, 2, 64, 64, gate="medium", dtype=jnp.float32)
    o, h = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="xla")
    with jax.enable_x64(True):
        up = [jnp.asarray(x, jnp.float64) for x in (q, k, v, g, h0)]
        o_ref, h_ref = ops.gla(*up[:4], initial_state=up[4], output_final_state=True, implementation="naive")
    assert o.dtype == jnp.float32 and h.dtype == jnp.float32
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, name="final_state")


def test_bfloat16_inputs_keep_float32_state(rng):
    q, k, v, g, h0 = gla_inputs(rng, 1, 70, 2, 32, 32, dtype=jnp.bfloat16)
    o, h = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="xla")
    o_ref, h_ref = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="naive")
    assert o.dtype == jnp.bfloat16 and h.dtype == jnp.float32
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, dtype=jnp.bfloat16, name="final_state")


def test_strong_gates_stay_finite(rng):
    """Log-decay -20 per step over 300 steps: exp(cumsum) underflows, nothing overflows."""
    q, k, v, _, h0 = gla_inputs(rng, 1, 300, 2, 32, 32)
    g = jnp.full(q.shape, -20.0)
    fn = lambda q, k, v, g, h0: ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="xla")  # noqa: E731
    (o, h), grads = outputs_and_grads(fn, (q, k, v, g, h0), rng)
    for x in (o, h, *grads):
        assert bool(jnp.all(jnp.isfinite(x)))
    # With exp(-20) ~ 2e-9 the state is the last token's outer product, nearly exactly.
    assert_close(h, k[:, -1, :, :, None] * v[:, -1, :, None, :], bound=1e-7, name="final_state")


def test_recurrent_form_matches_chunked(rng):
    q, k, v, g, h0 = gla_inputs(rng, 2, 40, 2, 16, 32)
    o_r, h_r = ops.gla_recurrent(q, k, v, g, initial_state=h0, output_final_state=True)
    o_c, h_c = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="xla")
    assert_close(o_r, o_c, name="o")
    assert_close(h_r, h_c, name="final_state")


def test_final_state_is_none_unless_asked(rng):
    q, k, v, g, _ = gla_inputs(rng, 1, 8, 1, 16, 16, initial_state=False)
    assert ops.gla(q, k, v, g)[1] is None
    assert ops.gla_recurrent(q, k, v, g)[1] is None


def test_splitting_a_sequence_carries_state(rng):
    """Running [0, t) then [t, T) from the carried state equals one pass over [0, T)."""
    q, k, v, g, h0 = gla_inputs(rng, 2, 100, 2, 16, 16)
    o, h = ops.gla(q, k, v, g, initial_state=h0, output_final_state=True, implementation="xla")
    o1, h1 = ops.gla(q[:, :37], k[:, :37], v[:, :37], g[:, :37], initial_state=h0, output_final_state=True, implementation="xla")
    o2, h2 = ops.gla(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], initial_state=h1, output_final_state=True, implementation="xla")
    assert_close(jnp.concatenate([o1, o2], axis=1), o, name="o")
    assert_close(h2, h, name="final_state")


def test_scale_default_and_explicit(rng):
    q, k, v, g, _ = gla_inputs(rng, 1, 20, 1, 64, 16, initial_state=False)
    o_default, _ = ops.gla(q, k, v, g, implementation="naive")
    o_explicit, _ = ops.gla(q, k, v, g, scale=0.125, implementation="naive")
    o_one, _ = ops.gla(q, k, v, g, scale=1.0, implementation="naive")
    assert_close(o_default, o_explicit, name="o")
    assert_close(o_one * 0.125, o_default, name="o")
