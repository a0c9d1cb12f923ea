"""`layer(x, norm=n)` is `layer(n(x))`: same outputs and gradients, n's output recomputed in the
backward pass (`jaxla.layers._common.input_projections`) rather than saved."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.layers import (
    Attention,
    GatedLinearAttention,
    LightningAttention,
    Mamba,
    RMSNorm,
    SparseMoE,
    SwiGLU,
)
from jaxla.testing import assert_close
from tests.inputs import normal
from tests.layers.helpers import randomize_params

B, T, D = 2, 70, 32

LAYERS = {
    "gla": lambda r: GatedLinearAttention(D, num_heads=2, rngs=r),
    "gla_conv_nogate": lambda r: GatedLinearAttention(
        D, num_heads=2, use_short_conv=True, use_output_gate=False, rngs=r),
    "lightning": lambda r: LightningAttention(D, num_heads=2, rngs=r),
    "mamba": lambda r: Mamba(D, d_state=8, rngs=r),
    "attention": lambda r: Attention(D, num_heads=4, num_kv_heads=2, rngs=r),
    "swiglu": lambda r: SwiGLU(D, 48, rngs=r),
    "moe": lambda r: SparseMoE(D, 48, num_experts=4, rngs=r),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_norm_argument_equals_norm_first(name, rng):
    layer = randomize_params(LAYERS[name](nnx.Rngs(int(rng.integers(1 << 30)))), rng)
    norm = randomize_params(RMSNorm(D), rng)
    x = normal(rng, (B, T, D), jnp.float32)
    cotangent = normal(rng, (B, T, D), jnp.float32)
    graphdef, state = nnx.split((layer, norm))

    @jax.jit
    def outputs_and_grads(state, x):
        def loss(state, x, inside):
            layer, norm = nnx.merge(graphdef, state)
            y = layer(x, norm=norm) if inside else layer(norm(x))
            return jnp.sum(y * cotangent), y

        return [jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, x, inside)
                for inside in (True, False)]

    ((_, y), grads), ((_, y_ref), grads_ref) = outputs_and_grads(state, x)
    assert_close(y, y_ref, name=f"{name} output")
    for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                                jax.tree.leaves(grads_ref), strict=True):
        assert_close(g, g_ref, name=f"{name} d{jax.tree_util.keystr(path)}")
