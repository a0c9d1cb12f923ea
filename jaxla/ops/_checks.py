"""Input validation shared by the ops: every bad input is a ValueError/TypeError naming the argument."""

from __future__ import annotations

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


def check_scale(scale) -> None:
    if scale is None:
        return
    if isinstance(scale, (jax.Array, np.ndarray)) and np.shape(scale) != ():
        raise ValueError(f"scale must be a scalar, got scale.shape={np.shape(scale)}")


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_nonpositive(name: str, x) -> None:
    """Log-decays must be <= 0. Checked when `x` holds values (eager calls); skipped under jit."""
    if x is None or not is_concrete(x):
        return
    # numpy, not jnp: inside a jit trace jnp would stage the reduction even for concrete values.
    top = float(np.max(np.asarray(x, np.float32))) if x.size else 0.0
    if not top <= 0.0:  # also catches NaN
        raise ValueError(
            f"{name} holds log-decays and must be <= 0 everywhere, got max({name})={top} "
            f"({name}.shape={x.shape})"
        )


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
