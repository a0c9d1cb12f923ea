"""Input validation shared by the ops: every bad input is a ValueError/TypeError naming the argument."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Implementation = Literal["pallas", "xla", "naive"]
IMPLEMENTATIONS: tuple[str, ...] = ("pallas", "xla", "naive")


def check_float(name: str, x) -> None:
    """`x` must be a floating-point array."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got {name}.dtype={x.dtype}")


def check_rank(name: str, x, rank: int, layout: str) -> None:
    check_float(name, x)
    if x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank} ({layout}), got {name}.shape={x.shape}")


def check_dims(what: str, named: Sequence[tuple[str, object, int]]) -> None:
    """All `(name, array, axis)` entries must agree on the size of `what` (e.g. "B")."""
    sizes = {name: x.shape[axis] for name, x, axis in named}
    if len(set(sizes.values())) > 1:
        shapes = ", ".join(f"{name}.shape={x.shape}" for name, x, _ in named)
        raise ValueError(f"mismatched {what}: {shapes}")


def check_shape(name: str, x, expected: tuple[int, ...], layout: str) -> None:
    check_float(name, x)
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}, got {name}.shape={x.shape}")


def check_state(name: str, state, expected: tuple[int, ...], layout: str, input_dtype) -> None:
    """States are float32; float64 is accepted only with float64 inputs (x64 reference checks)."""
    if state is None:
        return
    check_shape(name, state, expected, layout)
    ok = state.dtype == jnp.float32 or (state.dtype == jnp.float64 and input_dtype == jnp.float64)
    if not ok:
        raise TypeError(
            f"{name} must be float32 (float64 only with float64 inputs), got {name}.dtype={state.dtype}"
        )


def check_chunk_size(chunk_size) -> None:
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool):
        raise TypeError(f"chunk_size must be an int, got {chunk_size!r}")
    if chunk_size < 16 or chunk_size > 256 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two in [16, 256], got {chunk_size=}")


def check_same_dtype(**arrays) -> None:
    """All named arrays share one dtype (e.g. q, k, v)."""
    dtypes = {name: x.dtype for name, x in arrays.items()}
    if len(set(dtypes.values())) > 1:
        names = ", ".join(arrays)
        got = ", ".join(f"{name}.dtype={dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"{names} must share a dtype, got {got}")


def check_scale(scale, *, default: float):
    """`scale` is a real number or a scalar array; returns it (or `default` when None)."""
    if scale is None:
        return default
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number, np.ndarray,
                                                         jax.Array)):
        raise TypeError(f"scale must be a real number or a scalar array, got "
                        f"{type(scale).__name__} {scale!r}")
    if np.shape(scale) != ():
        raise ValueError(f"scale must be a scalar, got scale.shape={np.shape(scale)}")
    if not jnp.issubdtype(jnp.result_type(scale), jnp.floating) and not jnp.issubdtype(
            jnp.result_type(scale), jnp.integer):
        raise TypeError(f"scale must be real, got dtype {jnp.result_type(scale)}")
    if is_concrete(scale) and not np.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got scale={float(scale)}")
    return scale


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_nonpositive(name: str, x) -> None:
    """Log-decays must be <= 0. Checked when `x` holds values (eager calls); under jit only in
    checked mode (`checking`)."""
    if x is None:
        return
    if not is_concrete(x):
        if _CHECKED[0]:
            _check_traced(name, x, "holds log-decays and must be <= 0 everywhere",
                          lambda a: not a.size or float(np.max(a)) <= 0.0)
        return
    # numpy, not jnp: inside a jit trace jnp would stage the reduction even for concrete values.
    top = float(np.max(np.asarray(x, np.float32))) if x.size else 0.0
    if not top <= 0.0:  # also catches NaN
        raise ValueError(
            f"{name} holds log-decays and must be <= 0 everywhere, got max({name})={top} "
            f"({name}.shape={x.shape})"
        )


def check_finite(**arrays) -> None:
    """No NaN or Inf in the named float arrays. Traced arrays are checked in checked mode only;
    concrete ones only in checked mode too (a full pass over every input on every call)."""
    if not _CHECKED[0]:
        return
    for name, x in arrays.items():
        if x is None:
            continue
        if is_concrete(x):
            bad = int(np.sum(~np.isfinite(np.asarray(x, np.float32))))
            if bad:
                raise ValueError(f"{name} has {bad} NaN/Inf values ({name}.shape={x.shape})")
        else:
            _check_traced(name, x, "must be finite (no NaN/Inf)",
                          lambda a: bool(np.all(np.isfinite(a))))


# Checked mode: `with jaxla.ops.checking():` (or JAXLA_CHECKED=1) makes the ops check their
# inputs' values under jit too, through a host callback per op (a sync: for debugging only).
_CHECKED = [os.environ.get("JAXLA_CHECKED", "") not in ("", "0")]


@contextlib.contextmanager
def checking(enabled: bool = True):
    """Check input values (gates <= 0, no NaN/Inf) also inside `jax.jit`, while tracing.

    The flag is read when a function is traced: jit-compiled functions traced before entering
    keep their unchecked form, and ones traced inside keep their checks. A failed check raises
    ValueError naming the argument (wrapped in JAX's runtime error when raised under jit).
    """
    previous = _CHECKED[0]
    _CHECKED[0] = bool(enabled)
    try:
        yield
    finally:
        _CHECKED[0] = previous


def _check_traced(name: str, x, what: str, ok) -> None:
    shape = tuple(x.shape)

    def callback(value):
        value = np.asarray(value, np.float32)
        if not ok(value):
            detail = (f"max({name})={float(np.max(value))}" if "<= 0" in what
                      else f"{int(np.sum(~np.isfinite(value)))} NaN/Inf")
            raise ValueError(f"{name} {what}, got {detail} ({name}.shape={shape})")

    jax.debug.callback(callback, x)


def check_implementation(implementation, available: Sequence[str], op: str) -> None:
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation={implementation!r} for {op}; choose one of "
            f"{IMPLEMENTATIONS} or None (pallas on GPU, xla elsewhere)"
        )
    if implementation is not None and implementation not in available:
        raise NotImplementedError(
            f"{op} has no {implementation!r} implementation yet; available: {tuple(available)}"
        )


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def resolve_implementation(implementation, available: Sequence[str], op: str) -> str:
    """`None` means the Pallas kernel on GPU (when it exists) and the chunked XLA path elsewhere."""
    check_implementation(implementation, available, op)
    if implementation is not None:
        return implementation
    if on_gpu() and "pallas" in available:
        return "pallas"
    return "xla"


def compute_dtype(*dtypes):
    """float32, or float64 when any input is float64 (the x64 spec path)."""
    return jnp.float64 if any(d == jnp.float64 for d in dtypes if d is not None) else jnp.float32
