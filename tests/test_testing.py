"""The shared tolerance helper itself: it must be able to fail."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxla.testing import FLOOR, assert_close, floor_of_sum, rel_error, tolerance


def test_passes_within_bound(rng):
    x = rng.standard_normal(1000)
    err = assert_close(jnp.asarray(x * (1 + 1e-7), jnp.float32), x, name="x")
    assert err < 1e-6


def test_fails_above_bound_and_prints_the_error(rng):
    x = rng.standard_normal(1000)
    with pytest.raises(AssertionError, match=r"x: relative error 1\.0\d\de-04 > 1\.0e-05 \(float32"):
        assert_close(jnp.asarray(x * (1 + 1e-4), jnp.float32), x, name="x")


def test_nan_always_fails(rng):
    x = rng.standard_normal(10)
    y = x.copy()
    y[3] = np.nan
    with pytest.raises(AssertionError, match="actual has 1 NaN/Inf"):
        assert_close(jnp.asarray(y), x, dtype=jnp.float32, bound=1e9)
    with pytest.raises(AssertionError, match="expected has 1 NaN/Inf"):
        assert_close(jnp.asarray(x), y, dtype=jnp.float32, bound=1e9)


def test_bounds_per_dtype():
    assert tolerance(jnp.float32) == 1e-5
    assert tolerance(jnp.bfloat16) == 5e-3
    assert tolerance(jnp.float64) < tolerance(jnp.float32)
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance(jnp.int32)


def test_shape_mismatch_fails(rng):
    with pytest.raises(AssertionError, match="shape"):
        assert_close(jnp.ones(3), np.ones(4))


def test_rel_error_of_bf16(rng):
    x = rng.standard_normal(4096)
    assert 1e-4 < rel_error(jnp.asarray(x, jnp.bfloat16), x) < 5e-3


def test_floor_of_sum_admits_the_rounding_of_a_cancelling_sum_and_no_more(rng):
    """Terms of size ~100 summing to ~1: a relative error of 1e-6 on each term (a tenth of the
    float32 bound) passes with `floor_of_sum`, fails without it; an error of 1e-3 still fails."""
    n, m = 4096, 3
    terms = rng.standard_normal((n, m)) * 100.0
    terms[-1] -= terms.sum(axis=0) - rng.standard_normal(m)  # the sum is ~1 per element
    exact = terms.sum(axis=0)
    rounded = (terms * (1 + 1e-6 * rng.standard_normal((n, m)))).sum(axis=0)
    floor = floor_of_sum(terms, dtype=jnp.float32)
    assert floor == pytest.approx(1e-5 * np.sqrt(np.mean(np.sum(terms ** 2, axis=0)))
                                  + np.sqrt(n) * FLOOR[jnp.dtype(jnp.float32)])
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(jnp.asarray(rounded, jnp.float32), exact, name="sum")
    assert_close(jnp.asarray(rounded, jnp.float32), exact, name="sum", floor=floor)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(jnp.asarray(exact + 1e-3 * np.linalg.norm(terms, axis=0), jnp.float32),
                     exact, name="sum", floor=floor)
    # Terms of one sign: at most the usual allowance again (`||terms|| <= |sum|`).
    same_sign = np.abs(terms)
    assert floor_of_sum(same_sign, dtype=jnp.float32, products=1) <= (
        1e-5 * np.abs(same_sign.sum(axis=0)).max() + np.sqrt(n) * 1e-6)
    assert floor_of_sum(terms, dtype=jnp.float32, bound=1e-3) > floor
