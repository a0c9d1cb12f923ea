"""RMSNorm, computed in float32 (no mean subtraction, learnable scale, no bias)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers._common import recomputed


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """`x / sqrt(mean(x^2) + eps) * weight` over the last axis, in float32."""
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return x * weight.astype(jnp.float32)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis.

    Input `[..., num_features]`, output the same shape in `out_dtype` (call argument), else the
    module's `dtype`, else the input's dtype. The statistics are always float32.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-6, dtype=None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        del rngs  # ones init: nothing random
        self.num_features = num_features
        self.eps = eps
        self.dtype = dtype
        self.weight = nnx.Param(jnp.ones((num_features,), param_dtype))

    def output_dtype(self, x: jax.Array, out_dtype=None):
        """The dtype of `self(x, out_dtype=out_dtype)`."""
        return jnp.dtype(out_dtype or self.dtype or x.dtype)

    def __call__(self, x: jax.Array, *, out_dtype=None) -> jax.Array:
        return recomputed(lambda x, w: self.normalize(x, w, out_dtype=out_dtype))(
            x, self.weight[...])

    def normalize(self, x: jax.Array, weight=None, *, out_dtype=None) -> jax.Array:
        """The norm without `recomputed` around it, for a chain that is recomputed as a whole
        (`jaxla.layers._common.input_projections`); `weight` None reads the module's."""
        if x.shape[-1] != self.num_features:
            raise ValueError(f"RMSNorm({self.num_features}) got {x.shape=}")
        weight = self.weight[...] if weight is None else weight
        return rms_norm(x, weight, self.eps).astype(self.output_dtype(x, out_dtype))
