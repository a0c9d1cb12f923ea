"""Parity with the PyTorch implementations on the committed transformers fixtures (CPU, float32).

tests/fixtures/make_hf_fixtures.py made each fixture folder with transformers 5.17.0: a tiny random
model saved by `save_pretrained` and its reference logits and greedy continuation.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxla.convert import import_checkpoint
from jaxla.models import generate
from jaxla.testing import assert_close

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


@pytest.mark.parametrize("name, pattern", [
    ("mamba", ("mamba",)),
    ("minimax", ("lightning", "lightning", "lightning", "attention")),
])
def test_logits_and_greedy_continuation_match_transformers(name, pattern):
    imported = import_checkpoint(FIXTURES / name)
    assert imported.architecture == name and imported.config.layer_pattern == pattern
    ref = np.load(FIXTURES / name / "reference.npz")
    logits = imported.model(jnp.asarray(ref["input_ids"]))
    assert_close(logits, ref["logits"], name=f"{name} logits", bound=1e-4)
    greedy = generate(imported.model, jnp.asarray(ref["prompt_ids"]),
                      ref["greedy_ids"].shape[1] - ref["prompt_ids"].shape[1])
    np.testing.assert_array_equal(np.asarray(greedy), ref["greedy_ids"])


def test_minimax_fixture_exercises_moe_gqa_and_residual_scales():
    config = import_checkpoint(FIXTURES / "minimax").config
    assert config.num_experts == 4 and config.num_experts_per_tok == 2
    assert config.kv_heads == 2 < config.num_heads
    assert config.block_style == "minimax"
    assert config.linear_residual != (1.0, 1.0) != config.mlp_residual
