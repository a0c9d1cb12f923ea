"""Small helpers shared by the layers: dtypes, initialisers, linear layers, kernel limits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.ops import kernel_refusal

# Inputs this long or shorter run the recurrent form of the op (FLA's switch), longer ones the
# chunked form.
RECURRENT_MAX_LEN = 64
IMPLEMENTATIONS = (None, "pallas", "xla", "naive")


def recomputed(fn):
    """`fn` with its intermediates recomputed in the backward pass instead of saved.

    For the float32 elementwise chains around the matmuls (norms, gates, activations): autodiff
    would save several float32 copies of the activations per chain (2.3 GiB per GLA-340M layer
    at B=8, T=2048 with all of them saved); recomputing them is one fused elementwise pass that
    reads the chain's inputs, which the neighbouring matmuls keep anyway. The chain's output is
    still saved when a later matmul's weight gradient reads it; a chain that ends in that matmul
    (SwiGLU's down projection; a block's norms with the projections that read them,
    `input_projections`) recomputes the output instead, and not the matmul, whose result the
    backward does not need.
    """
    return jax.checkpoint(fn)


def input_projections(x: jax.Array, norm, *projections):
    """`tuple(p(norm(x)) for p in projections)`, a layer's projections of its normalised input.

    `norm(x)` is recomputed from `x` in the backward pass, not saved for the projections' weight
    gradients (the caller keeps `x`, the residual stream, anyway); the projections are not
    rerun, as the backward does not need their outputs inside the chain. So each must be one
    linear map of its input: an `nnx.Linear`, or `(fn, *weights)` for `fn(h, *weights)` (a
    matmul, plus a bias at most: anything more would be recomputed too), or None (gives None).
    The weights enter the chain cast to the compute dtype, so the backward keeps those casts as
    it would without the chain (a scan over layers saves them rather than its stacked
    parameters). `norm=None` applies the projections to `x` itself.
    """
    calls = [_projection_call(p) for p in projections]
    weights = [None if c is None else c[1] for c in calls]

    def project(h, weights):
        return tuple(None if c is None else c[0](h, *w) for c, w in zip(calls, weights,
                                                                          strict=True))

    if norm is None:
        return project(x, weights)
    return recomputed(lambda x, weights: project(norm.normalize(x), weights))(x, weights)


def _projection_call(p):
    """`(fn, weights)` of one `input_projections` projection."""
    if p is None:
        return None
    if isinstance(p, nnx.Linear):
        graphdef, state = nnx.split(p)
        if p.dtype is not None:  # the cast nnx.Linear makes
            state = jax.tree.map(lambda a: a.astype(p.dtype), state)
        return (lambda h, state: nnx.merge(graphdef, state)(h)), (state,)
    fn, *weights = p
    return fn, tuple(weights)


def normal_init(stddev: float = 0.02):
    return nnx.initializers.normal(stddev)


def linear(in_features: int, out_features: int, *, use_bias: bool = False, rngs: nnx.Rngs,
           dtype, param_dtype, stddev: float = 0.02, kernel_init=None,
           bias_init=None) -> nnx.Linear:
    """`nnx.Linear` with FLA's init: kernel normal(0, stddev) `[in, out]`, zero bias."""
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=kernel_init or normal_init(stddev),
        bias_init=bias_init or nnx.initializers.zeros_init(), rngs=rngs,
    )


def check_implementation(implementation) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def check_kernel_sizes(layer: str, op: str, implementation, **sizes) -> None:
    """Sizes the op's Pallas kernel does not take raise at construction when the kernel may run.

    `sizes` are the kernel's size arguments (`head_dim_k`/`head_dim_v`, or `state_size`); layers
    built with implementation="xla" or "naive" take any size.
    """
    if implementation in (None, "pallas"):
        reason = kernel_refusal(op, dtype=jnp.float32, **sizes)
        if reason is not None:
            raise ValueError(f"{layer}: {reason}; use more heads or implementation='xla'")


def check_divides(layer: str, what: str, num: int, width_name: str, width: int) -> None:
    if num < 1 or width % num:
        raise ValueError(f"{layer}: {what}={num} must divide {width_name}={width}")


def canonical_dtype(dtype):
    return None if dtype is None else jnp.dtype(dtype)


def compute_dtype(dtype, x: jax.Array, norm=None):
    """The module's compute dtype, or when it has none its input's: x's, or with a `norm` (see
    `input_projections`) norm(x)'s."""
    if dtype is not None:
        return dtype
    return x.dtype if norm is None else norm.output_dtype(x)
