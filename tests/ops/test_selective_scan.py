"""Selective scan: the chunked associative-scan path against the step spec in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from jaxla.testing import assert_close, outputs_and_grads
from tests.inputs import selective_scan_inputs

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0")

# (T, groups, use_D, use_z, use_bias, softplus, with_h0): every option on and off across the grid.
CASES = [
    (1, None, True, True, True, True, True),
    (63, None, False, False, False, False, False),
    (65, 2, True, False, True, True, False),
    (300, None, True, True, False, True, True),
    (300, 4, False, True, True, False, True),
    (130, 1, True, True, True, True, False),
]


def _run(impl, args, opts, rng):
    use_D, use_z, use_bias, softplus, with_h0 = opts
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = args
    optional = {"D": Dv if use_D else None, "z": z if use_z else None,
                "delta_bias": bias if use_bias else None, "h0": h0 if with_h0 else None}
    names = ["u", "delta", "A", "B", "C"] + [n for n, x in optional.items() if x is not None]

    def fn(u, delta, A, Bm, Cm, *rest):
        kw = dict(zip(names[5:], rest, strict=True))
        return ops.selective_scan(
            u, delta, A, Bm, Cm, kw.get("D"), kw.get("z"), delta_bias=kw.get("delta_bias"),
            delta_softplus=softplus, initial_state=kw.get("h0"), output_final_state=True,
            implementation=impl,
        )

    extra = tuple(x for x in optional.values() if x is not None)
    return names, outputs_and_grads(fn, (u, delta, A, Bm, Cm, *extra), rng)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-G{c[1]}-D{int(c[2])}-z{int(c[3])}-bias{int(c[4])}-sp{int(c[5])}-h0{int(c[6])}")
def test_chunked_matches_spec_float64(x64, rng, case):
    T, groups, *opts = case
    args = selective_scan_inputs(rng, 2, T, 8, 4, groups=groups, dtype=jnp.float64)
    seed = int(rng.integers(1 << 30))
    names, ((o_ref, h_ref), g_ref) = _run("naive", args, opts, np.random.default_rng(seed))
    _, ((o, h), grads) = _run("xla", args, opts, np.random.default_rng(seed))
    assert o.dtype == jnp.float64
    assert_close(o, o_ref, name="out")
    assert_close(h, h_ref, name="final_state")
    for name, a, b in zip(names, grads, g_ref, strict=True):
        assert_close(a, b, name="d" + name)


def test_float32_and_bfloat16_against_float64_spec(rng):
    args32 = selective_scan_inputs(rng, 2, 150, 16, 8, groups=2, dtype=jnp.float32)
    kw = dict(delta_softplus=True, output_final_state=True)
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = args32
    o, h = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, delta_bias=bias, initial_state=h0, implementation="xla", **kw)
    with jax.enable_x64(True):
        up = [jnp.asarray(x, jnp.float64) for x in args32]
        o_ref, h_ref = ops.selective_scan(*up[:7], delta_bias=up[7], initial_state=up[8], implementation="naive", **kw)
    assert o.dtype == jnp.float32 and h.dtype == jnp.float32
    assert_close(o, o_ref, name="out")
    assert_close(h, h_ref, name="final_state")

    low = [x.astype(jnp.bfloat16) for x in (u, delta, Bm, Cm, z)]
    o16, h16 = ops.selective_scan(low[0], low[1], A, low[2], low[3], Dv, low[4], delta_bias=bias, initial_state=h0, implementation="xla", **kw)
    o16_ref, h16_ref = ops.selective_scan(low[0], low[1], A, low[2], low[3], Dv, low[4], delta_bias=bias, initial_state=h0, implementation="naive", **kw)
    assert o16.dtype == jnp.bfloat16 and h16.dtype == jnp.float32
    assert_close(o16, o16_ref, name="out_bf16")
    assert_close(h16, h16_ref, dtype=jnp.bfloat16, name="final_state_bf16")


def test_state_update_steps_match_the_scan(rng):
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = selective_scan_inputs(rng, 2, 12, 8, 4, groups=2)
    kw = dict(delta_bias=bias, delta_softplus=True)
    o_ref, h_ref = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, initial_state=h0, output_final_state=True, implementation="naive", **kw)
    h, outs = h0, []
    for t in range(u.shape[1]):
        o_t, h = ops.selective_state_update(h, u[:, t], delta[:, t], A, Bm[:, t], Cm[:, t], Dv, z[:, t], **kw)
        outs.append(o_t)
    assert_close(jnp.stack(outs, axis=1), o_ref, name="out")
    assert_close(h, h_ref, name="final_state")


def test_splitting_a_sequence_carries_state(rng):
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = selective_scan_inputs(rng, 1, 260, 8, 4)
    kw = dict(delta_bias=bias, delta_softplus=True, output_final_state=True, implementation="xla")
    o, h = ops.selective_scan(u, delta, A, Bm, Cm, Dv, z, initial_state=h0, **kw)
    cut = lambda x, s: x[:, s]  # noqa: E731
    a, b = slice(0, 129), slice(129, None)
    o1, h1 = ops.selective_scan(*(cut(x, a) for x in (u, delta)), A, cut(Bm, a), cut(Cm, a), Dv, cut(z, a), initial_state=h0, **kw)
    o2, h2 = ops.selective_scan(*(cut(x, b) for x in (u, delta)), A, cut(Bm, b), cut(Cm, b), Dv, cut(z, b), initial_state=h1, **kw)
    assert_close(jnp.concatenate([o1, o2], axis=1), o, name="out")
    assert_close(h2, h, name="final_state")
