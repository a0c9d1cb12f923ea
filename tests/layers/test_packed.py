"""Packed documents through every mixer: a packed call equals each document run alone.

The documents of `[B, T]` rows (random lengths, a 1-token one in each row, ids that repeat) go
through the layer once with `segment_ids`, in float32. The reference runs every document as its
own row, from t = 0, without segment_ids, through a float64 copy of the layer (float64
parameters, inputs and compute dtype; the parts a layer keeps in float32 by design, such as its
gates, norms and recurrent states, stay float32). Outputs must agree to the float32 bound, and
so must the parameter gradients of a sum-loss (random cotangents): the packed gradient is the
sum of the per-document ones.
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
from jaxla.layers.rope import apply_rope
from jaxla.testing import assert_close
from tests.inputs import normal
from tests.layers.helpers import (
    float64_copy,
    gather_documents,
    one_document_per_row,
    outputs_and_param_grads,
    packed_documents,
    packed_positions,
    randomize_params,
)

B, D = 2, 32

# The ops' step-by-step implementation compiles fastest; tests/ops holds every implementation
# of every op to it with packed documents, and tests/models runs the default one.
NAIVE = "naive"
MIXERS = {  # (rngs, dtype) -> layer
    "gla": lambda r, dt: GatedLinearAttention(D, num_heads=2, implementation=NAIVE, dtype=dt,
                                              param_dtype=dt, rngs=r),
    # short convolutions, grouped kv heads, a feature map and a gate floor
    "gla_conv_grouped": lambda r, dt: GatedLinearAttention(
        D, num_heads=2, num_kv_heads=1, feature_map="swish", clamp_min=-4.0,
        use_short_conv=True, conv_bias=True, implementation=NAIVE, dtype=dt, param_dtype=dt,
        rngs=r),
    "lightning": lambda r, dt: LightningAttention(D, num_heads=2, layer_idx=1, num_layers=3,
                                                  implementation=NAIVE, dtype=dt,
                                                  param_dtype=dt, rngs=r),
    "mamba": lambda r, dt: Mamba(D, d_state=8, implementation=NAIVE, dtype=dt, param_dtype=dt,
                                 rngs=r),
    "attention_gqa": lambda r, dt: Attention(D, num_heads=4, num_kv_heads=2,
                                             implementation=NAIVE, dtype=dt, param_dtype=dt,
                                             rngs=r),
    "short_conv": lambda r, dt: ShortConvolution(D, 4, use_bias=True, dtype=dt, param_dtype=dt,
                                                 rngs=r),
}

# The scale of the random weights (`randomize_params`): unit scale, but for GLA, whose q and k
# gradients at unit scale lose up to 4e-5 relative to float64 in float32 arithmetic (the layer
# run on the documents unpacked as much as packed: its output norm amplifies the rounding of
# small outputs), so it takes weights where float32 holds the 1e-5 bound (measured <= 1.5e-6).
# Its forget gates are then close to 0.96 per step (logsigmoid(0) / 16): a state carries over
# tens of steps, so a missing restart still shows as an O(1) error.
WEIGHT_SCALE = {"gla": 0.1, "gla_conv_grouped": 0.1}

# (mixer, T, x64): T <= 64 takes the recurrent form of the linear ops, T > 64 the chunked one;
# x64: the packed float32 call runs under jax_enable_x64 with int64 segment_ids.
CASES = [("gla", 40, False), ("gla_conv_grouped", 100, True), ("lightning", 40, True),
         ("lightning", 100, False), ("mamba", 70, False), ("attention_gqa", 40, False),
         ("attention_gqa", 100, True), ("short_conv", 40, False)]


def check_packed_equals_documents(module, rng, T, x64, *, reference=None, dtype=jnp.float32,
                                  length=None):
    """Packed rows of T through `module` against one document per row of `length` (default:
    the longest) through `reference()` in float64 (under x64), or through `module` itself."""
    ids, docs = packed_documents(rng, B, T)
    x = normal(rng, (B, T, D), dtype)
    cotangent = normal(rng, (B, T, D), dtype)
    with jax.enable_x64(x64):
        y, grads = outputs_and_param_grads(module, x, cotangent,
                                      segment_ids=ids.astype(jnp.int64 if x64 else jnp.int32))

    L = length or max(end - start for _, start, end in docs)
    padding = normal(rng, (len(docs), L, D), dtype)  # after each document: must not matter
    x_docs = one_document_per_row(x, docs, padding)
    ct_docs = one_document_per_row(cotangent, docs, jnp.zeros_like(padding))
    if reference is None:
        y_docs, grads_docs = outputs_and_param_grads(module, x_docs, ct_docs)
    else:
        with jax.enable_x64(True):
            y_docs, grads_docs = outputs_and_param_grads(reference(), x_docs.astype(jnp.float64),
                                                    ct_docs.astype(jnp.float64))

    assert_close(packed_positions(y, docs), gather_documents(y_docs, docs), name="output",
                 dtype=dtype)
    for (path, g), (_, g_docs) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(grads_docs),
                                      strict=True):
        assert_close(g, g_docs, name=f"d{jax.tree_util.keystr(path)}", dtype=dtype)


@pytest.mark.parametrize(("name", "T", "x64"), CASES,
                         ids=[f"{n}-T{t}{'-x64' if x else ''}" for n, t, x in CASES])
def test_packed_layer_equals_its_documents_run_alone(name, T, x64, rng):
    make = MIXERS[name]
    module = randomize_params(make(nnx.Rngs(int(rng.integers(1 << 30))), jnp.float32), rng,
                              WEIGHT_SCALE.get(name, 1.0))
    check_packed_equals_documents(module, rng, T, x64,
                                  reference=lambda: float64_copy(
                                      lambda: make(nnx.Rngs(0), jnp.float64), module))


def test_document_positions_and_mask():
    ids = jnp.asarray([[5, 5, 2, 2, 2, 5], [0, 1, 2, 2, 0, 0]], jnp.int32)
    assert segments.document_positions(ids).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 0, 1]]
    assert segments.document_index(ids).tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 2, 2, 3, 3]]
    same = segments.same_document(ids)
    assert same.shape == (2, 6, 6)
    assert not same[0, 5, 0] and same[0, 4, 2] and same[1, 3, 2] and not same[1, 4, 0]


def test_attention_rotates_by_positions_within_each_document(rng, monkeypatch):
    """RoPE is relative, so restarted positions change the scores only by rounding: what the
    outputs cannot show, the positions handed to `apply_rope` do."""
    import jaxla.layers.attention as attention_module

    seen = []

    def recording_rope(x, positions, theta):
        seen.append(positions)
        return apply_rope(x, positions, theta)

    monkeypatch.setattr(attention_module, "apply_rope", recording_rope)
    ids, _ = packed_documents(rng, B, 40)
    module = MIXERS["attention_gqa"](nnx.Rngs(0), jnp.float32)
    module(normal(rng, (B, 40, D), jnp.float32), segment_ids=ids)
    assert len(seen) == 2  # q and k
    for positions in seen:
        assert positions.tolist() == segments.document_positions(ids).tolist()


@pytest.mark.gpu
def test_cudnn_attention_honours_segment_ids(rng):
    """cuDNN flash attention (bf16) with the document mask equals its documents run alone."""
    module = Attention(D, num_heads=4, num_kv_heads=2, implementation="cudnn",
                       dtype=jnp.bfloat16, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    module = randomize_params(module, rng)
    check_packed_equals_documents(module, rng, 128, False, dtype=jnp.bfloat16, length=128)


@pytest.mark.parametrize("name", list(MIXERS))
def test_segment_ids_are_checked(name):
    module = MIXERS[name](nnx.Rngs(0), jnp.float32)
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
