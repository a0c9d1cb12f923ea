"""Helpers for the layer and model tests: jitted apply through split/merge, random parameters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, cache):
    module = nnx.merge(graphdef, state)
    return module(x) if cache is None else module(x, cache=cache)


def apply(module, x, cache=None):
    """`module(x)` or `module(x, cache=cache)` under jit (one compile per shape)."""
    graphdef, state = nnx.split(module)
    return _apply(graphdef, state, x, cache)


def decode_by_token(module, x, cache):
    """Feed `x [B, T, ...]` one position at a time through the cache; outputs joined on axis 1."""
    outs = []
    for t in range(x.shape[1]):
        y, cache = apply(module, x[:, t:t + 1], cache)
        outs.append(y)
    return jnp.concatenate(outs, axis=1), cache


def decode_in_pieces(module, x, cache, sizes):
    """Feed `x` in consecutive pieces of the given sizes (prefill, then more prefill or decode)."""
    assert sum(sizes) == x.shape[1], (sizes, x.shape)
    outs, start = [], 0
    for size in sizes:
        y, cache = apply(module, x[:, start:start + size], cache)
        outs.append(y)
        start += size
    return jnp.concatenate(outs, axis=1), cache


def randomize_params(module, rng: np.random.Generator, scale: float = 1.0):
    """Replace every parameter by random normals (divided by sqrt(fan-in) for matrices).

    The default inits are small (normal(0.02)) and make gates nearly constant; random weights of
    unit scale exercise strong, varied gates and large activations in the cache tests.
    """
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param):
            shape = param[...].shape
            std = scale / np.sqrt(shape[0]) if len(shape) == 2 else scale
            param[...] = jnp.asarray(std * rng.standard_normal(shape), param[...].dtype)
    return module
