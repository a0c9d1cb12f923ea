"""The formulas' parameter count covers GLA's grouped KV heads and MoE MLPs; their FLOPs are
refused, not miscounted."""

import pytest
from flax import nnx

from jaxla.flops.formulas import model_forward, param_count
from jaxla.models import CausalLM, LMConfig

CONFIGS = [
    LMConfig.tiny("gla", num_heads=4, gla_kv_heads=2, use_short_conv=True),
    LMConfig.tiny("hybrid", num_heads=4, num_kv_heads=2, num_experts=3, num_experts_per_tok=2,
                  layer_pattern=("lightning", "attention", "mamba", "lightning")),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["gla-grouped", "moe"])
def test_param_count_and_refused_flops(config):
    model = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    assert param_count(config) == model.num_params()
    with pytest.raises(NotImplementedError, match="gla_kv_heads|num_experts"):
        model_forward(config, 1, 8)
