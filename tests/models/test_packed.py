"""CausalLM on packed documents: one packed call equals every document run alone.

Models of every kind take rows of documents with `segment_ids`, in float32; the reference runs
each document as its own row from t = 0, without them, through a float64 copy of the model
(`dtype="float64"`, the same parameter values). Logits and the parameter gradients of a
sum-loss must agree to the float32 bound. The layers' own packed tests
(tests/layers/test_packed.py) pin each mixer; here the ids must reach every block through the
model's three ways of running them (a `lax.scan` over repetitions of the layer pattern, a plain
loop, a loop of rematerialised blocks) and through every block style (pre-norm, MiniMax's,
mixtures of experts).
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.models import CausalLM, LMConfig
from jaxla.models.lm import scan_groups
from jaxla.testing import assert_close
from tests.layers.helpers import (
    float64_copy,
    gather_documents,
    one_document_per_row,
    outputs_and_param_grads,
    packed_documents,
    packed_positions,
)

B, V = 2, 64


# The ops' step-by-step implementation compiles fastest (tests/ops holds the others to it on
# packed documents). x64: the packed call runs under jax_enable_x64 with int64 ids.
CASES = {
    # The recurrent mixers with convolutions (GLA's short ones, Mamba's), 2 repetitions of the
    # pattern as one lax.scan.
    "gla-mamba-scan-x64": (LMConfig.tiny("gla", num_layers=4, layer_pattern=("gla", "mamba"),
                                         use_short_conv=True, scan_layers=True), 100, True),
    # MiniMax-01's blocks: lightning and softmax attention (grouped KV heads), residuals from
    # the norm, scaled branches, a mixture of experts; blocks in a plain loop.
    "minimax-moe-loop": (LMConfig.tiny(
        "lightning", num_heads=4, num_kv_heads=2, layer_pattern=("lightning", "attention"),
        block_style="minimax", num_experts=3, num_experts_per_tok=2, intermediate_size=40,
        linear_residual=(1.5, 0.5), tie_embeddings=False), 40, False),
    # Grouped GLA heads with a feature map, rematerialised blocks in a loop.
    "gla-grouped-remat-loop": (LMConfig.tiny(
        "gla", num_heads=4, gla_kv_heads=2, feature_map="relu", remat=True), 40, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_model_equals_its_documents_run_alone(case, rng):
    config, T, x64 = CASES[case]
    config = config.replace(vocab_size=V, implementation="naive")
    model = CausalLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    if config.scan_layers:  # the blocks do run as a scan
        assert scan_groups(model.blocks, len(config.layer_pattern)) is not None
    ids, docs = packed_documents(rng, B, T)
    tokens = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal((B, T, V)), jnp.float32)
    with jax.enable_x64(x64):
        logits, grads = outputs_and_param_grads(
            model, tokens, cotangent, segment_ids=ids.astype(jnp.int64 if x64 else jnp.int32))

    L = max(end - start for _, start, end in docs)
    padding = jnp.asarray(rng.integers(0, V, (len(docs), L)), jnp.int32)
    tokens_docs = one_document_per_row(tokens, docs, padding)
    ct_docs = one_document_per_row(cotangent, docs, jnp.zeros((len(docs), L, V)))
    with jax.enable_x64(True):
        reference = float64_copy(lambda: CausalLM(
            config.replace(dtype="float64", param_dtype="float64"), rngs=nnx.Rngs(0)), model)
        logits_docs, grads_docs = outputs_and_param_grads(reference, tokens_docs,
                                                    ct_docs.astype(jnp.float64))

    assert_close(packed_positions(logits, docs), gather_documents(logits_docs, docs),
                 name="logits", dtype=jnp.float32)
    for (path, g), (_, g_docs) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(grads_docs),
                                      strict=True):
        assert_close(g, g_docs, name=f"d{jax.tree_util.keystr(path)}", dtype=jnp.float32)


def test_one_document_per_row_changes_nothing_and_decoding_refuses_ids(rng):
    config = LMConfig.tiny("hybrid", vocab_size=V, use_short_conv=True, implementation="naive")
    model = CausalLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    tokens = jnp.asarray(rng.integers(0, V, (B, 70)), jnp.int32)
    same = jnp.full((B, 70), 3, jnp.int32)
    forward = nnx.jit(lambda model, tokens, ids: model(tokens, segment_ids=ids))
    assert_close(forward(model, tokens, same), forward(model, tokens, None),
                 name="one document per row")
    with pytest.raises(ValueError, match="segment_ids cannot be combined with a decode cache"):
        model(tokens, cache=model.init_cache(B, 70), segment_ids=same)
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[B, T\]"):
        model(tokens, segment_ids=same[:, :-1])
