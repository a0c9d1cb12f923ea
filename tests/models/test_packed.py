"""CausalLM on packed documents: one packed forward equals every document run alone.

A hybrid of all four mixers (GLA with short convolutions, lightning, Mamba, softmax attention)
takes rows of documents with `segment_ids`; the reference runs each document as its own row
from t = 0 without them. Logits and the parameter gradients of a sum-loss must agree. The
layers' own packed tests (tests/layers/test_packed.py) pin each mixer; here the ids must reach
every block through the model's three ways of running them: a `lax.scan` over repetitions of
the layer pattern, a plain loop, and a loop of rematerialised blocks. The model keeps its own
initialisation: random unit-scale weights through 8 layers make some gradients ill-conditioned
enough (norms are scale invariant) that two float32 runs of one document differ by more than the
float32 bound, while a missing mask or reset shows as a relative error of 0.1 to 1.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.models import CausalLM, LMConfig
from jaxla.models.lm import scan_groups
from jaxla.testing import assert_close
from tests.layers.helpers import (
    gather_documents,
    one_document_per_row,
    packed_documents,
    packed_positions,
)

B, V = 2, 64


def _logits_and_grads(model, ids, cotangent, **kw):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params, ids, cotangent, kw):
        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(ids, **kw)
            return jnp.sum(logits * cotangent), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    return run(params, ids, cotangent, kw)


# The ops' step-by-step implementation compiles fastest (tests/ops holds the others to it on
# packed documents).
CASES = {
    # All four mixers, 2 repetitions of the pattern as one lax.scan; x64 on (int64 ids).
    "hybrid-scan-x64": (LMConfig.tiny("hybrid", num_layers=8), 100, True),
    # The two loops over blocks (cheapest mixer): plain and rematerialised.
    "loop": (LMConfig.tiny("attention", scan_layers=False), 40, False),
    "remat-loop": (LMConfig.tiny("attention", scan_layers=False, remat=True), 40, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_packed_model_equals_its_documents_run_alone(case, rng):
    config, T, x64 = CASES[case]
    config = config.replace(vocab_size=V, use_short_conv=True, implementation="naive")
    with jax.enable_x64(x64):
        model = CausalLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
        if config.scan_layers:  # the blocks do run as a scan
            assert scan_groups(model.blocks, len(config.layer_pattern)) is not None
        ids, docs = packed_documents(rng, B, T)
        if x64:
            ids = ids.astype(jnp.int64)
        tokens = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
        cotangent = jnp.asarray(rng.standard_normal((B, T, V)), jnp.float32)
        logits, grads = _logits_and_grads(model, tokens, cotangent, segment_ids=ids)

        L = max(end - start for _, start, end in docs)
        padding = jnp.asarray(rng.integers(0, V, (len(docs), L)), jnp.int32)
        tokens_docs = one_document_per_row(tokens, docs, padding)
        ct_docs = one_document_per_row(cotangent, docs, jnp.zeros((len(docs), L, V)))
        logits_docs, grads_docs = _logits_and_grads(model, tokens_docs, ct_docs)

    assert_close(packed_positions(logits, docs), gather_documents(logits_docs, docs),
                 name="logits")
    for (path, g), (_, g_docs) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(grads_docs),
                                      strict=True):
        assert_close(g, g_docs, name=f"d{jax.tree_util.keystr(path)}")


def test_one_document_per_row_changes_nothing_and_decoding_refuses_ids(rng):
    model = CausalLM(LMConfig.tiny("hybrid", vocab_size=V, use_short_conv=True,
                                   implementation="naive"), rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    tokens = jnp.asarray(rng.integers(0, V, (B, 70)), jnp.int32)
    same = jnp.full((B, 70), 3, jnp.int32)
    forward = nnx.jit(lambda model, tokens, ids: model(tokens, segment_ids=ids))
    assert_close(forward(model, tokens, same), forward(model, tokens, None),
                 name="one document per row")
    with pytest.raises(ValueError, match="segment_ids cannot be combined with a decode cache"):
        model(tokens, cache=model.init_cache(B, 70), segment_ids=same)
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[B, T\]"):
        model(tokens, segment_ids=same[:, :-1])
