"""Packed documents through every mixer: a packed forward equals each document run alone.

The documents of `[B, T]` rows (random lengths, a 1-token one in each row, ids that repeat) go
through the layer once with `segment_ids`; the reference runs every document as its own row,
from t = 0, without segment_ids. Outputs must agree, and so must the parameter gradients of a
sum-loss (random cotangents): the packed gradient is the sum of the per-document ones.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxla.layers import (
    Attention,
    GatedLinearAttention,
    LightningAttention,
    Mamba,
    ShortConvolution,
    segments,
)
from jaxla.testing import assert_close
from tests.inputs import normal
from tests.layers.helpers import (
    gather_documents,
    one_document_per_row,
    packed_documents,
    packed_positions,
    randomize_params,
)

B, D = 2, 32

# The ops' step-by-step implementation compiles fastest; tests/ops holds every implementation
# of every op to it with packed documents, and tests/models runs the default one.
NAIVE = "naive"
MIXERS = {
    "gla": lambda r: GatedLinearAttention(D, num_heads=2, implementation=NAIVE, rngs=r),
    "gla_short_conv": lambda r: GatedLinearAttention(
        D, num_heads=2, use_short_conv=True, conv_bias=True, implementation=NAIVE, rngs=r),
    "lightning": lambda r: LightningAttention(D, num_heads=2, layer_idx=1, num_layers=3,
                                              implementation=NAIVE, rngs=r),
    "mamba": lambda r: Mamba(D, d_state=8, implementation=NAIVE, rngs=r),
    "attention_gqa": lambda r: Attention(D, num_heads=4, num_kv_heads=2, implementation=NAIVE,
                                         rngs=r),
    "short_conv": lambda r: ShortConvolution(D, 4, use_bias=True, rngs=r),
}

# (mixer, T, x64): T <= 64 takes the recurrent form of the linear ops, T > 64 the chunked one;
# under x64 the layer stays float32 (it computes gates, norms and states in float32 anyway) and
# segment_ids are int64.
CASES = [("gla", 40, False), ("gla_short_conv", 100, True), ("lightning", 40, True),
         ("lightning", 100, False), ("mamba", 70, False), ("attention_gqa", 40, False),
         ("attention_gqa", 100, True), ("short_conv", 40, False)]


def _loss_and_grads(module, x, cotangent, **kw):
    """`(y, d sum(y * cotangent) / d params)`, jitted."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    @jax.jit
    def run(params, x, cotangent, kw):
        def loss(params):
            y = nnx.merge(graphdef, params, rest)(x, **kw)
            return jnp.sum(y * cotangent), y

        (_, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return y, grads

    return run(params, x, cotangent, kw)


def check_packed_equals_documents(module, rng, T, x64, dtype=jnp.float32, length=None):
    """Packed rows of T against one document per row of `length` (default: the longest)."""
    ids, docs = packed_documents(rng, B, T)
    if x64:
        ids = ids.astype(jnp.int64)
    x = normal(rng, (B, T, D), dtype)
    cotangent = normal(rng, (B, T, D), dtype)
    y, grads = _loss_and_grads(module, x, cotangent, segment_ids=ids)

    L = length or max(end - start for _, start, end in docs)
    padding = normal(rng, (len(docs), L, D), dtype)  # after each document: must not matter
    x_docs = one_document_per_row(x, docs, padding)
    ct_docs = one_document_per_row(cotangent, docs, jnp.zeros_like(padding))
    y_docs, grads_docs = _loss_and_grads(module, x_docs, ct_docs)

    assert_close(packed_positions(y, docs), gather_documents(y_docs, docs), name="output",
                 dtype=dtype)
    for (path, g), (_, g_docs) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(grads_docs),
                                      strict=True):
        assert_close(g, g_docs, name=f"d{jax.tree_util.keystr(path)}", dtype=dtype)


@pytest.mark.parametrize(("name", "T", "x64"), CASES,
                         ids=[f"{n}-T{t}{'-x64' if x else ''}" for n, t, x in CASES])
def test_packed_layer_equals_its_documents_run_alone(name, T, x64, rng):
    with jax.enable_x64(x64):
        module = randomize_params(MIXERS[name](nnx.Rngs(int(rng.integers(1 << 30)))), rng)
        check_packed_equals_documents(module, rng, T, x64)


def test_document_positions_and_mask():
    ids = jnp.asarray([[5, 5, 2, 2, 2, 5], [0, 1, 2, 2, 0, 0]], jnp.int32)
    assert segments.document_positions(ids).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 0, 1]]
    assert segments.document_index(ids).tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 2, 2, 3, 3]]
    same = segments.same_document(ids)
    assert same.shape == (2, 6, 6)
    assert not same[0, 5, 0] and same[0, 4, 2] and same[1, 3, 2] and not same[1, 4, 0]


@pytest.mark.gpu
def test_cudnn_attention_honours_segment_ids(rng):
    """cuDNN flash attention (bf16) with the document mask equals its documents run alone."""
    module = Attention(D, num_heads=4, num_kv_heads=2, implementation="cudnn",
                       dtype=jnp.bfloat16, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    check_packed_equals_documents(randomize_params(module, rng), rng, 128, False, jnp.bfloat16,
                                  length=128)


@pytest.mark.parametrize("name", list(MIXERS))
def test_segment_ids_are_checked(name):
    module = MIXERS[name](nnx.Rngs(0))
    x = jnp.ones((B, 5, D), jnp.float32)
    ids = jnp.zeros((B, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[B, T\]"):
        module(x, segment_ids=jnp.zeros((B, 4), jnp.int32))
    with pytest.raises(TypeError, match="segment_ids must be an integer array"):
        module(x, segment_ids=ids.astype(jnp.float32))
    if name != "short_conv":
        cache = module.init_cache(B, 8)
        with pytest.raises(ValueError, match="segment_ids cannot be combined with a decode cache"):
            module(x, cache=cache, segment_ids=ids)
    else:
        with pytest.raises(ValueError, match="segment_ids cannot be combined with a decode cache"):
            module(x, module.init_cache(B), segment_ids=ids)
