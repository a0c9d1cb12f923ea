"""Every mixer: full forward == token-by-token decode == prefill-then-decode (float32).

T = 70 makes the full forward take the chunked op (T > 64) while single tokens and short
prefills take the recurrent form, so the tests also hold chunked against recurrent.
"""

import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.layers import Attention, GatedLinearAttention, LightningAttention, Mamba
from jaxla.testing import assert_close
from tests.inputs import normal
from tests.layers.helpers import apply, decode_by_token, decode_in_pieces, randomize_params

B, T, D = 2, 70, 32

MIXERS = {
    "gla": lambda r: GatedLinearAttention(D, num_heads=2, rngs=r),
    "gla_conv_nogate": lambda r: GatedLinearAttention(
        D, num_heads=2, use_short_conv=True, conv_bias=True, use_output_gate=False, rngs=r),
    "lightning_minimax": lambda r: LightningAttention(D, num_heads=2, layer_idx=1, num_layers=3, rngs=r),
    "lightning_fla": lambda r: LightningAttention(
        D, num_heads=4, head_dim=16, layer_idx=0, num_layers=2, decay="fla", rngs=r),
    "mamba": lambda r: Mamba(D, d_state=8, rngs=r),
    "attention_gqa": lambda r: Attention(D, num_heads=4, num_kv_heads=2, rngs=r),
}


def _mixer(name, rng, randomize):
    module = MIXERS[name](nnx.Rngs(int(rng.integers(1 << 30))))
    return randomize_params(module, rng) if randomize else module


@pytest.mark.parametrize("randomize", [False, True], ids=["init", "random_params"])
@pytest.mark.parametrize("name", list(MIXERS))
def test_full_forward_equals_token_by_token_decode(name, randomize, rng):
    module = _mixer(name, rng, randomize)
    x = normal(rng, (B, T, D), jnp.float32)
    full = apply(module, x)
    assert full.shape == (B, T, D) and full.dtype == jnp.float32
    decoded, _ = decode_by_token(module, x, module.init_cache(B, T))
    assert_close(decoded, full, name=f"{name} token-by-token")


@pytest.mark.parametrize("sizes", [(66, 1, 3), (3, 66, 1), (20, 45, 5)],
                         ids=["chunked-prefill", "recurrent-then-chunked", "recurrent-prefills"])
@pytest.mark.parametrize("name", list(MIXERS))
def test_prefill_then_decode_equals_full_forward(name, sizes, rng):
    module = _mixer(name, rng, randomize=True)
    x = normal(rng, (B, T, D), jnp.float32)
    full = apply(module, x)
    pieces, cache = decode_in_pieces(module, x, module.init_cache(B, T), sizes)
    assert_close(pieces, full, name=f"{name} prefill {sizes}")
    if name == "attention_gqa":
        assert int(cache.length) == T
