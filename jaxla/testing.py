"""The one tolerance rule for comparing an implementation with the spec, and gradient helpers.

Error metric: RMS relative error `||actual - expected|| / ||expected||`, computed in float64.
The bound depends on the dtype under test (the precision of the inputs and outputs):

| dtype    | bound | floor | why |
| float64  | 1e-10 | 1e-12 | spec vs spec: only reassociation of float64 sums |
| float32  | 1e-5  | 1e-6  | float32 arithmetic against the float64 spec |
| float16  | 1e-3  | 1e-4  | half-precision outputs, float32 accumulation |
| bfloat16 | 5e-3  | 1e-4  | bf16 rounds to 2^-9 relative; outputs and gradients are stored in bf16 |

A comparison passes when `rms(actual - expected) <= bound * rms(expected) + floor`. The absolute
floor matters only for tensors whose true values are far below the terms that produce them, such
as a gate gradient under a decay of exp(-20) per step: there the reference's own rounding error
(eps x the size of the cancelling terms) is larger than the value itself. A sum of n independent
products (a position's gate gradient sums the K x V products of its state) carries sqrt(n)
floors: their rounding errors add in quadrature (`floor=` passes it). A sum of n computed terms
(a constant decay's gradient sums the B x T per-position gate gradients, which can cancel to far
below their own size) is allowed the quadrature sum of its terms' allowances: `floor_of_sum`.
NaN or Inf in either array always fails. Failure messages print the measured errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOLERANCE = {
    jnp.dtype(jnp.float64): 1e-10,
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.float16): 1e-3,
    jnp.dtype(jnp.bfloat16): 5e-3,
}


FLOOR = {
    jnp.dtype(jnp.float64): 1e-12,
    jnp.dtype(jnp.float32): 1e-6,
    jnp.dtype(jnp.float16): 1e-4,
    jnp.dtype(jnp.bfloat16): 1e-4,
}


def tolerance(dtype) -> float:
    try:
        return TOLERANCE[jnp.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no tolerance for dtype={dtype}; known: {list(TOLERANCE)}") from None


def _as_f64(x):
    return np.asarray(jnp.asarray(x, jnp.float32) if _is_low(x) else x, np.float64)


def rel_error(actual, expected) -> float:
    """`||actual - expected|| / ||expected||` in float64 (absolute error when expected is 0)."""
    a, e = _as_f64(actual), _as_f64(expected)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: actual.shape={a.shape}, expected.shape={e.shape}")
    diff = float(np.linalg.norm((a - e).ravel()))
    ref = float(np.linalg.norm(e.ravel()))
    return diff / ref if ref > 0 else diff


def _is_low(x) -> bool:
    return jnp.dtype(getattr(x, "dtype", np.float64)) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def assert_close(actual, expected, *, dtype=None, name: str = "value", bound: float | None = None,
                 floor: float | None = None):
    """Fail unless `rms(actual - expected) <= bound * rms(expected) + floor` (module docstring).

    `dtype` (default `actual.dtype`) picks the bound and the floor; `bound` and `floor` override
    them. Returns the measured relative error so callers can log it.
    """
    dtype = jnp.dtype(actual.dtype if dtype is None else dtype)
    bound = tolerance(dtype) if bound is None else bound
    floor = FLOOR[dtype] if floor is None else floor
    a, e = _as_f64(actual), _as_f64(expected)
    for label, x in (("actual", a), ("expected", e)):
        if not np.all(np.isfinite(x)):
            bad = int(np.sum(~np.isfinite(x)))
            raise AssertionError(f"{name}: {label} has {bad} NaN/Inf of {x.size} (shape {x.shape})")
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    rms = lambda x: float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0  # noqa: E731
    diff, ref = rms(a - e), rms(e)
    err = diff / ref if ref > 0 else diff
    if not diff <= bound * ref + floor:
        raise AssertionError(
            f"{name}: relative error {err:.3e} > {bound:.1e} ({dtype}; rms error {diff:.3e}, "
            f"rms expected {ref:.3e}, floor {floor:.0e})"
        )
    return err


def floor_of_sum(terms, *, dtype, products: int = 1, bound: float | None = None) -> float:
    """The `floor=` for a sum of n computed terms: the quadrature sum of the terms' allowances.

    terms: `[n, ...]`, the float64 reference's terms (summed over axis 0; the other axes are the
      sum's elements, e.g. a constant decay's gradient `[H]` from per-position gate gradients
      `[B * T, H]`). Each term is held to `bound x |term| + sqrt(products) x floor` (a term that
      sums `products` independent products; `bound` as `assert_close` takes it). Independent
      errors add in quadrature, and by the triangle inequality that is at most
      `bound x ||terms|| + sqrt(n x products) x floor` per element, returned as the rms over
      the elements (what `assert_close` measures). Where the terms cancel (a weak decay's 64
      per-position gradients, of total size 8,360, summing to 40) the float32 rounding of the
      sum exceeds `bound x |sum|` in any implementation; where they do not (terms of one sign),
      `||terms|| <= |sum|`, so this adds at most the usual allowance once more.
    """
    dtype = jnp.dtype(dtype)
    t = np.asarray(terms, np.float64)
    t = t.reshape(t.shape[0], -1)
    norms = np.sqrt(np.sum(np.square(t), axis=0))
    rms_norm = float(np.sqrt(np.mean(np.square(norms))))
    bound = tolerance(dtype) if bound is None else bound
    return bound * rms_norm + float(np.sqrt(t.shape[0] * products)) * FLOOR[dtype]


def random_like(rng: np.random.Generator, x, dtype=None):
    """A standard-normal array shaped like `x` (never zeros), in `dtype` or x's dtype."""
    dtype = x.dtype if dtype is None else dtype
    return jnp.asarray(rng.standard_normal(x.shape), dtype)


def outputs_and_grads(fn, args, rng: np.random.Generator):
    """Evaluate `fn(*args)` and the gradient of `sum(out * cotangent)` w.r.t. every argument.

    The cotangents are random for every output leaf (e.g. the output and the final state), drawn
    from `rng` so that two implementations called with same-seeded generators see the same ones.
    Returns `(outputs, grads)` with `grads` a tuple aligned with `args`.
    """
    outputs, vjp = jax.vjp(fn, *args)
    cotangents = jax.tree.map(lambda o: random_like(rng, o), outputs)
    return outputs, vjp(cotangents)
