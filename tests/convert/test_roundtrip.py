"""Export then import is exact, for every architecture; the CLI does the same."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxla.convert import export_checkpoint, import_checkpoint, load_pretrained
from jaxla.convert.__main__ import main as convert_main
from jaxla.models import CausalLM, LMConfig
from jaxla.models.io import flat_params, save_model

CONFIGS = {
    "gla": LMConfig.tiny("gla", num_heads=4, gla_kv_heads=2, feature_map="relu",
                         use_short_conv=True, tie_embeddings=False, clamp_min=-3.0,
                         intermediate_size=96),
    "gla-tied": LMConfig.tiny("gla", use_output_gate=False),
    "mamba": LMConfig.tiny("mamba", dt_rank=3),
    "minimax": LMConfig.tiny("lightning", num_layers=4, num_heads=4, num_kv_heads=2,
                             layer_pattern=("lightning", "attention"), block_style="minimax",
                             num_experts=3, num_experts_per_tok=2, intermediate_size=40,
                             lightning_norm_eps=1e-6, linear_residual=(1.5, 0.5),
                             tie_embeddings=False),
}


def _random_model(config, rng):
    model = CausalLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    params = flat_params(model)
    # Fresh values everywhere (norm scales and biases are constant at init).
    state = nnx.state(model, nnx.Param)
    leaves = [jnp.asarray(rng.standard_normal(v.shape) * 0.3, v.dtype)
              for v in jax_leaves(state)]
    nnx.update(model, jax_unflatten(state, leaves))
    assert flat_params(model).keys() == params.keys()
    return model


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def jax_unflatten(tree, leaves):
    import jax

    return jax.tree.unflatten(jax.tree.structure(tree), leaves)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_then_import_is_exact(name, rng, tmp_path):
    model = _random_model(CONFIGS[name], rng)
    arch = name.split("-")[0]
    export_checkpoint(model, tmp_path, eos_token_id=7)
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["model_type"] == arch
    imported = import_checkpoint(tmp_path)
    assert imported.architecture == arch and imported.eos_token_id == 7
    want, got = flat_params(model), flat_params(imported.model)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    tokens = jnp.asarray(rng.integers(0, 256, (2, 9)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(imported.model(tokens)), np.asarray(model(tokens)))


def test_cli_import_then_export_round_trip(rng, tmp_path, capsys):
    model = _random_model(CONFIGS["mamba"], rng)
    export_checkpoint(model, tmp_path / "hf", eos_token_id=0)
    assert convert_main(["import", str(tmp_path / "hf"), str(tmp_path / "jx")]) == 0
    loaded = load_pretrained(tmp_path / "jx")
    assert loaded.kind == "model" and loaded.eos_token_id == 0
    assert convert_main(["export", str(tmp_path / "jx"), str(tmp_path / "hf2")]) == 0
    a = (tmp_path / "hf" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "hf2" / "model.safetensors").read_bytes()
    assert "imported mamba" in capsys.readouterr().out


def test_model_folder_round_trip(rng, tmp_path):
    model = _random_model(CONFIGS["minimax"], rng)
    save_model(model, tmp_path, eos_token_id=3)
    loaded = load_pretrained(tmp_path)
    tokens = jnp.asarray(rng.integers(0, 256, (1, 5)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(loaded.model(tokens)), np.asarray(model(tokens)))
