"""SwiGLU MLP (FLA's `GatedMLP`, LLaMA's MLP): `down(silu(gate(x)) * up(x))`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers._common import compute_dtype, input_projections, linear, recomputed


class SwiGLU(nnx.Module):
    """`x [..., D] -> [..., D]` through an intermediate width `intermediate_size`; no biases.

    The product `silu(gate) * up` is formed in float32 and cast back to the compute dtype.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32, initializer_range: float = 0.02):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stddev=initializer_range)
        self.dtype = dtype
        self.gate_proj = linear(hidden_size, intermediate_size, **kw)
        self.up_proj = linear(hidden_size, intermediate_size, **kw)
        self.down_proj = linear(intermediate_size, hidden_size, **kw)

    def __call__(self, x: jax.Array, *, norm=None) -> jax.Array:
        cd = compute_dtype(self.dtype, x, norm)

        def product_and_down(gate, up):
            return self.down_proj((jax.nn.silu(gate.astype(jnp.float32))
                                   * up.astype(jnp.float32)).astype(cd))

        # The down projection sits inside the recomputed chain so that the product, which its
        # weight gradient reads, is recomputed from gate and up in the backward rather than saved
        # (FLA's swiglu kernel does the same); the projection itself is not rerun.
        return recomputed(product_and_down)(
            *input_projections(x, norm, self.gate_proj, self.up_proj))
