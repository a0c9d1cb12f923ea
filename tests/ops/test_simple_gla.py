"""Simple GLA and Lightning Attention: chunked XLA path against the spec in float64, and the decays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.testing import assert_close, floor_of_sum, outputs_and_grads
from tests.inputs import GATES, gla_inputs, log_decay

SHAPES = [
    (1, 1, 1, 16, 16),
    (2, 63, 3, 48, 100),
    (1, 64, 1, 64, 64),
    (2, 65, 3, 100, 48),
    (1, 200, 3, 128, 16),
]
# (gate regime, which gates): g only, g_gamma only, both, and neither (plain linear attention).
GATE_CASES = [(gate, kind) for gate in GATES for kind in ("g", "g_gamma", "both")] + [("medium", "none")]


def _inputs(rng, shape, gate, kind, with_h0, dtype=jnp.float64):
    q, k, v, _, h0 = gla_inputs(rng, *shape, dtype=dtype, initial_state=with_h0)
    B, T, H = shape[:3]
    gd = jnp.float64 if dtype == jnp.float64 else jnp.float32
    g = log_decay(rng, (B, T, H), gate, gd) if kind in ("g", "both") else None
    g_gamma = log_decay(rng, (H,), gate, gd) if kind in ("g_gamma", "both") else None
    return q, k, v, g, g_gamma, h0


def _run(impl, q, k, v, g, g_gamma, h0, rng, chunk_size=64):
    """Outputs and grads w.r.t. q, k, v, then whichever of g, g_gamma, h0 are given."""
    names = [n for n, x in (("g", g), ("g_gamma", g_gamma), ("h0", h0)) if x is not None]

    def fn(q, k, v, *rest):
        kw = dict(zip(names, rest, strict=True))
        return ops.simple_gla(
            q, k, v, kw.get("g"), g_gamma=kw.get("g_gamma"), initial_state=kw.get("h0"),
            output_final_state=True, chunk_size=chunk_size, implementation=impl,
        )

    extra = tuple(x for x in (g, g_gamma, h0) if x is not None)
    return names, outputs_and_grads(fn, (q, k, v, *extra), rng)


# Every shape with every gate case; the initial state alternates over both, so that each shape
# and each gate case runs with and without one.
FLOAT64_CASES = [
    pytest.param(shape, gate, kind, (i + j) % 2 == 0,
                 id="B{}-T{}-H{}-K{}-V{}".format(*shape) + f"-{gate}-{kind}-"
                    + ("h0" if (i + j) % 2 == 0 else "no_h0"))
    for i, shape in enumerate(SHAPES) for j, (gate, kind) in enumerate(GATE_CASES)
]


@pytest.mark.parametrize("shape,gate,kind,with_h0", FLOAT64_CASES)
def test_chunked_matches_spec_float64(x64, rng, shape, gate, kind, with_h0):
    args = q, k, v, g, g_gamma, h0 = _inputs(rng, shape, gate, kind, with_h0)
    seed = int(rng.integers(1 << 30))
    names, ((o_ref, h_ref), g_ref) = _run("naive", *args, np.random.default_rng(seed))
    _, ((o, h), grads) = _run("xla", *args, np.random.default_rng(seed))
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, name="final_state")
    B, T, H, K, V = shape
    floor = None
    if g_gamma is not None:
        # dg_gamma sums the per-position gate gradients: g's own when g is given (the gate is
        # g + g_gamma), else those of g_gamma folded into a per-position g (grads[3] is dg).
        grads_with_g = g_ref
        if g is None:
            folded = jnp.broadcast_to(g_gamma, (B, T, H))
            _, (_, grads_with_g) = _run("naive", q, k, v, folded, None, h0,
                                        np.random.default_rng(seed))
        floor = floor_of_sum(np.asarray(grads_with_g[3]).reshape(B * T, H), dtype=jnp.float64,
                             products=K * V)
    for name, a, b in zip(["dq", "dk", "dv"] + ["d" + n for n in names], grads, g_ref, strict=True):
        assert_close(a, b, name=name, floor=floor if name == "dg_gamma" else None)


@pytest.mark.parametrize("chunk_size", [16, 128])
def test_chunk_sizes(x64, rng, chunk_size):
    args = _inputs(rng, (2, 150, 2, 32, 24), "medium", "both", True)
    seed = int(rng.integers(1 << 30))
    _, ((o_ref, h_ref), g_ref) = _run("naive", *args, np.random.default_rng(seed))
    _, ((o, h), grads) = _run("xla", *args, np.random.default_rng(seed), chunk_size)
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, name="final_state")
    for a, b in zip(grads, g_ref, strict=True):
        assert_close(a, b, name="grad")


def test_simple_gla_equals_gla_with_broadcast_gate(rng):
    """A scalar gate per head is GLA with the same gate on every key row."""
    q, k, v, g, g_gamma, h0 = _inputs(rng, (2, 90, 2, 32, 16), "medium", "both", True, jnp.float32)
    o, h = ops.simple_gla(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True, implementation="xla")
    g_rows = jnp.broadcast_to((g + g_gamma)[..., None], q.shape)
    o_gla, h_gla = ops.gla(q, k, v, g_rows, initial_state=h0, output_final_state=True, implementation="xla")
    assert_close(o, o_gla, name="o")
    assert_close(h, h_gla, name="final_state")


def test_recurrent_form_matches_chunked(rng):
    q, k, v, g, g_gamma, h0 = _inputs(rng, (2, 40, 2, 16, 32), "medium", "both", True, jnp.float32)
    o_r, h_r = ops.simple_gla_recurrent(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True)
    o_c, h_c = ops.simple_gla(q, k, v, g, g_gamma=g_gamma, initial_state=h0, output_final_state=True, implementation="xla")
    assert_close(o_r, o_c, name="o")
    assert_close(h_r, h_c, name="final_state")


# Hand-computed decays for H = 8, num_layers = 24.
# fla: g_gamma[h] = -(8/8) * (1 - l/24) * h  ->  l=0: -h;  l=5: -(19/24) h = -0.791666... h.
FLA_LAYER0 = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
FLA_LAYER5 = [0.0, -0.7916667, -1.5833333, -2.375, -3.1666667, -3.9583333, -4.75, -5.5416667]
# minimax: rate[h] = 2^-(h+1) * (1 - l/(23 + 1e-5) + 1e-5)
#   l=0: factor 1.00001          -> 0.500005, 0.2500025, ..., 0.00390629
#   l=5: factor 1 - 5/23.00001 + 1e-5 = 0.7826187904 -> 0.3913093952, 0.1956546976, ...
MINIMAX_LAYER0 = [-0.500005, -0.2500025, -0.12500125, -0.062500625, -0.0312503125,
                  -0.01562515625, -0.007812578125, -0.0039062890625]
MINIMAX_LAYER5 = [-0.3913093952, -0.1956546976, -0.0978273488, -0.0489136744, -0.0244568372,
                  -0.0122284186, -0.0061142093, -0.00305710465]


@pytest.mark.parametrize(
    "decay,layer_idx,expected",
    [("fla", 0, FLA_LAYER0), ("fla", 5, FLA_LAYER5),
     ("minimax", 0, MINIMAX_LAYER0), ("minimax", 5, MINIMAX_LAYER5)],
)
def test_lightning_decay_slopes(decay, layer_idx, expected):
    got = ops.lightning_decay(8, layer_idx, 24, decay)
    assert got.shape == (8,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(expected, np.float32), rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("decay", ["minimax", "fla"])
def test_lightning_attention_is_simple_gla_with_its_decay(rng, decay):
    q, k, v, _, h0 = gla_inputs(rng, 2, 80, 4, 32, 32)
    o, h = ops.lightning_attention(q, k, v, layer_idx=3, num_layers=12, decay=decay, initial_state=h0, output_final_state=True, implementation="xla")
    g_gamma = ops.lightning_decay(4, 3, 12, decay)
    scale = 32**-0.5 if decay == "fla" else 1.0
    o_ref, h_ref = ops.simple_gla(q, k, v, g_gamma=jnp.asarray(g_gamma), scale=scale, initial_state=h0, output_final_state=True, implementation="naive")
    assert_close(o, o_ref, name="o")
    assert_close(h, h_ref, name="final_state")
    o_r, h_r = ops.lightning_attention_recurrent(q, k, v, layer_idx=3, num_layers=12, decay=decay, initial_state=h0, output_final_state=True)
    assert_close(o_r, o_ref, name="o_recurrent")


def test_lightning_single_layer_stack_is_finite():
    assert np.all(np.isfinite(ops.lightning_decay(4, 0, 1, "minimax")))


def test_ops_trace_under_jit(rng):
    """Validation must not force concrete values inside jit (constant decays are numpy arrays)."""
    q, k, v, g, h0 = gla_inputs(rng, 1, 20, 2, 16, 16)
    f = jax.jit(lambda q, k, v: ops.lightning_attention(q, k, v, layer_idx=1, num_layers=4, implementation="xla")[0])
    o_ref, _ = ops.lightning_attention(q, k, v, layer_idx=1, num_layers=4, implementation="naive")
    assert_close(f(q, k, v), o_ref, name="o")
    f = jax.jit(lambda q, k, v, g, h0: ops.gla(q, k, v, g, initial_state=h0, implementation="xla")[0])
    assert_close(f(q, k, v, g, h0), ops.gla(q, k, v, g, initial_state=h0, implementation="naive")[0], name="o")
