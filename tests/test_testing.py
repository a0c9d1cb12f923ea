"""The shared tolerance helper itself: it must be able to fail."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxla.testing import assert_close, rel_error, tolerance


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
