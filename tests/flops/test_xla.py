"""XLA's cost analysis read (`jaxla.flops.xla`) and corrected (`jaxla.flops.report.count`): result
shapes, loops counted once by XLA and corrected, cumsum."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxla.flops import xla
from jaxla.flops.report import walker

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def _matmul_flops(n):
    return 2 * n**3


@pytest.mark.parametrize(
    "result, flops, trans, available",
    [
        ({"flops": 10.0, "transcendentals": 2.0, "bytes accessed": 8.0}, 10.0, 2.0, True),
        ([{"flops": 10.0}], 10.0, 0.0, True),  # jax < 0.4.38: one dict per program
        ([{"flops": 4.0}, {"flops": 6.0, "transcendentals": 1.0}], 10.0, 1.0, True),
        ({"bytes accessed": 8.0}, 0.0, 0.0, True),  # keys are missing when zero
        (None, 0.0, 0.0, False),  # lowered analysis on the CUDA plugin
        ([], 0.0, 0.0, False),
    ],
)
def test_read_analysis_shapes(result, flops, trans, available):
    a = xla.read_analysis(result)
    assert (a.flops, a.transcendentals, a.available) == (flops, trans, available)


def test_read_analysis_custom_call_and_bad_types():
    a = xla.read_analysis({"flops": -1.0, "bytes accessed": -1.0, "optimal_seconds": -1.0})
    assert a.has_negative
    with pytest.raises(TypeError):
        xla.read_analysis("flops")


def test_missing_key_is_zero_flops():
    # XLA folds x * 1.0 while lowering: the result has no "flops" key at all.
    c = walker.count(lambda x: x * 1.0, S((8,), F32))
    assert c.raw.raw is not None and "flops" not in c.raw.raw
    assert c.flops == 0.0


def test_count_is_none_when_unavailable(monkeypatch):
    monkeypatch.setattr(xla, "_safe_cost_analysis", lambda obj: None)
    c = walker.count(lambda x: x + 1, S((8,), F32))
    assert c.flops is None and c.transcendentals is None
    assert any("unavailable" in w for w in c.warnings)


def _scan_matmuls(x, w, steps, unroll=1):
    return lax.scan(lambda c, _: (c @ w, None), x, None, length=steps, unroll=unroll)[0]


@pytest.mark.parametrize("stage", ["lowered", "compiled"])
def test_loop_undercount_detected_and_corrected(rng, stage):
    n, steps = 64, int(rng.integers(3, 12))
    args = (S((n, n), F32), S((n, n), F32))
    true = steps * _matmul_flops(n)
    # The same program written as a Python loop is straight-line HLO: XLA counts it right.
    unrolled = walker.count(lambda x, w: _loop(x, w, steps), *args, stage=stage, loops="ignore")
    assert unrolled.flops == true and unrolled.hlo_while_loops == 0

    raw = walker.count(lambda x, w: _scan_matmuls(x, w, steps), *args, stage=stage, loops="ignore")
    assert raw.hlo_while_loops == 1
    assert raw.flops == _matmul_flops(n) + 2  # one iteration + the loop counter's add and compare
    assert any("counted once" in w for w in raw.warnings)

    fixed = walker.count(lambda x, w: _scan_matmuls(x, w, steps), *args, stage=stage)
    assert fixed.flops == true
    assert [(lp.trip_count, lp.body_flops) for lp in fixed.loops] == [(steps, _matmul_flops(n))]
    assert fixed.loop_undercount == true - raw.flops


def _loop(x, w, steps):
    for _ in range(steps):
        x = x @ w
    return x


def test_unroll_mode_matches_multiply_mode():
    n, steps = 32, 6
    args = (S((n, n), F32), S((n, n), F32))
    fn = lambda x, w: _scan_matmuls(jnp.tanh(x), w, steps, unroll=2)  # noqa: E731
    multiply = walker.count(fn, *args)
    unroll = walker.count(fn, *args, loops="unroll")
    assert unroll.hlo_while_loops == 0
    assert multiply.flops == unroll.flops == steps * _matmul_flops(n)
    assert multiply.transcendentals == unroll.transcendentals == n * n


def test_nested_loops_and_fori_loop():
    n, outer, inner = 16, 3, 5

    def fn(x, w):
        def body(c, _):
            return lax.fori_loop(0, inner, lambda i, y: y @ w, c), None  # static bounds: a scan
        return lax.scan(body, x, None, length=outer)[0]

    args = (S((n, n), F32), S((n, n), F32))
    c = walker.count(fn, *args)
    true = outer * inner * _matmul_flops(n)
    # fori_loop carries its index through the scan: one integer add per iteration is real work
    # in the jaxpr (it folds to constants once unrolled); loop counters differ by a few ops.
    assert abs(c.flops - true) <= outer * (inner + 1)
    assert walker.count(fn, *args, loops="unroll").flops == true
    assert {(lp.trip_count, lp.multiplicity) for lp in c.loops} == {(outer, 1), (inner, outer)}


def test_grad_of_scan_counts_both_loops():
    n, steps = 32, 4
    loss = lambda x, w: jnp.sum(_scan_matmuls(x, w, steps) ** 2)  # noqa: E731
    c = walker.count(jax.grad(loss, argnums=1), S((n, n), F32), S((n, n), F32))
    assert len([lp for lp in c.loops if lp.multiplicity == 1]) == 2  # forward and backward scans
    # forward 1 matmul per step, backward 2 (dX and dW); + the square and its gradient.
    matmuls = 3 * steps * _matmul_flops(n)
    assert matmuls <= c.flops <= matmuls * 1.01


def test_while_loop_with_dynamic_trip_count_is_reported():
    def fn(x, k):
        return lax.while_loop(lambda s: s[1] < k, lambda s: (s[0] @ s[0], s[1] + 1), (x, 0))[0]

    c = walker.count(fn, S((16, 16), F32), S((), jnp.int32))
    assert c.hlo_while_loops == 1
    assert any("while_loop" in w for w in c.warnings)


def test_cumsum_is_serialised():
    rows, n = 16, 64
    fn = lambda x: jnp.cumsum(x, axis=-1)  # noqa: E731
    raw = walker.count(fn, S((rows, n), F32), cumulative="xla")
    fixed = walker.count(fn, S((rows, n), F32))
    assert fixed.flops == rows * (n - 1)
    assert raw.flops > 10 * fixed.flops  # reduce-window lowering: n - 1 adds per element
    assert [a.primitive for a in fixed.adjustments] == ["cumsum"]


def test_pallas_cost_estimate_replaces_interpret_grid_count():
    from jax.experimental import pallas as pl

    n, block = 64, 32
    flops = 2 * n**3

    def kernel(a_ref, b_ref, o_ref):
        o_ref[...] = a_ref[...] @ b_ref[...]

    def matmul(a, b, estimate):
        return pl.pallas_call(
            kernel, out_shape=jax.ShapeDtypeStruct((n, n), F32), grid=(n // block, n // block),
            in_specs=[pl.BlockSpec((block, n), lambda i, j: (i, 0)),
                      pl.BlockSpec((n, block), lambda i, j: (0, j))],
            out_specs=pl.BlockSpec((block, block), lambda i, j: (i, j)),
            cost_estimate=estimate, interpret=True)(a, b)

    args = (S((n, n), F32), S((n, n), F32))
    est = pl.CostEstimate(flops=flops, transcendentals=0, bytes_accessed=3 * n * n * 4)
    with_est = walker.count(lambda a, b: matmul(a, b, est), *args)
    assert with_est.flops == flops
    assert with_est.raw.flops < flops / 2  # interpret mode: one grid step of the while loop
    without = walker.count(lambda a, b: matmul(a, b, None), *args)
    assert any("pallas_call without" in w for w in without.warnings)
