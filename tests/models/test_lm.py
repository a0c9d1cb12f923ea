"""CausalLM: cached decoding equals the full forward, patterns, heads, dtypes, remat, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxla.layers import Attention, LightningAttention
from jaxla.models import CausalLM, LMConfig
from jaxla.testing import assert_close
from tests.layers.helpers import apply, decode_by_token, decode_in_pieces

KINDS = ("gla", "lightning", "mamba", "attention", "hybrid")


def tokens(rng, B, T, vocab=256):
    return jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32)


def model_of(config, rng):
    return CausalLM(config, rngs=nnx.Rngs(int(rng.integers(1 << 30))))


def test_hybrid_full_forward_equals_token_by_token_decode(rng):
    model = model_of(LMConfig.tiny("hybrid"), rng)
    assert [b.kind for b in model.blocks] == ["lightning", "gla", "mamba", "attention"]
    ids = tokens(rng, 2, 70)
    full = apply(model, ids)
    assert full.shape == (2, 70, 256) and full.dtype == jnp.float32
    decoded, _ = decode_by_token(model, ids, model.init_cache(2, 70))
    assert_close(decoded, full, name="hybrid token-by-token")


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_full_forward(kind, rng):
    config = LMConfig.tiny(kind, use_short_conv=kind == "gla")
    model = model_of(config, rng)
    ids = tokens(rng, 2, 70)
    full = apply(model, ids)
    # A short (recurrent) prefill, a long (chunked) one from that state, then one token; the
    # layer tests cover the other orders.
    sizes = (3, 66, 1)
    pieces, cache = decode_in_pieces(model, ids, model.init_cache(2, 72), sizes)
    assert_close(pieces, full, name=f"{kind} prefill {sizes}")
    assert len(cache) == config.num_layers


def test_minimax_pattern_seven_lightning_then_softmax(rng):
    config = LMConfig.tiny("lightning", num_layers=16, layer_pattern=("lightning",) * 7 + ("attention",))
    model = CausalLM(config, rngs=nnx.Rngs(0))
    kinds = [b.kind for b in model.blocks]
    assert kinds == (["lightning"] * 7 + ["attention"]) * 2
    H = config.num_heads
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        assert isinstance(mixer, Attention if (i + 1) % 8 == 0 else LightningAttention)
        if isinstance(mixer, LightningAttention):
            # MiniMax's decay of layer i of 16: slope_h * (1 - i / (16 - 1 + 1e-5) + 1e-5).
            slopes = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
            expected = -slopes * (1 - i / (15 + 1e-5) + 1e-5)
            np.testing.assert_allclose(np.asarray(mixer.g_gamma[...]), expected, rtol=1e-6)
            assert mixer.decay == "minimax"
    assert LMConfig.minimax_hybrid_340m().mixers[7::8] == ("attention",) * 3


def test_untied_head_adds_its_matrix_and_is_used(rng):
    tied = LMConfig.tiny("gla")
    untied = tied.replace(tie_embeddings=False)
    a = nnx.eval_shape(lambda: CausalLM(tied, rngs=nnx.Rngs(0)))
    b = model_of(untied, rng)
    assert b.num_params() - a.num_params() == untied.hidden_size * untied.vocab_size
    ids = tokens(rng, 1, 5)
    before = apply(b, ids)
    b.lm_head[...] = 2.0 * b.lm_head[...]
    assert_close(apply(b, ids), 2.0 * before, name="logits scale with the head")


def test_bf16_compute_gives_float32_logits_and_params(rng):
    model = model_of(LMConfig.tiny("hybrid", dtype="bfloat16"), rng)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    logits = apply(model, tokens(rng, 2, 9))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def _loss_and_grads(model, ids):
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(ids[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1))

    return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_gives_the_same_loss_and_gradients(rng):
    config = LMConfig.tiny("gla")
    ids = tokens(rng, 2, 12)
    seed = int(rng.integers(1 << 30))
    loss, grads = _loss_and_grads(CausalLM(config, rngs=nnx.Rngs(seed)), ids)
    remat_model = CausalLM(config.replace(remat=True), rngs=nnx.Rngs(seed))
    loss_r, grads_r = _loss_and_grads(remat_model, ids)
    assert_close(loss_r, loss, name="loss")
    for (path, g), g_r in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(grads_r),
                              strict=True):
        assert_close(g_r, g, name=jax.tree_util.keystr(path))


def test_implementation_reaches_every_mixer(rng):
    hybrid = nnx.eval_shape(lambda: CausalLM(LMConfig.tiny("hybrid"), rngs=nnx.Rngs(0),
                                             implementation="naive"))
    assert hybrid.config.implementation == "naive"
    assert {b.mixer.implementation for b in hybrid.blocks} == {"naive"}
    # The model on the step-by-step spec equals the model on the chunked path (T > 64).
    config = LMConfig.tiny("gla")
    ids = tokens(rng, 1, 70)
    assert_close(apply(CausalLM(config, rngs=nnx.Rngs(0), implementation="naive"), ids),
                 apply(CausalLM(config, rngs=nnx.Rngs(0)), ids), name="naive spec vs chunked")


@pytest.mark.parametrize("build, error, match", [
    (lambda: LMConfig.tiny("gla", num_heads=3), ValueError, "num_heads=3 must divide hidden_size=64"),
    (lambda: LMConfig.tiny("gla", layer_pattern=("gla", "retnet")), ValueError, "unknown mixer 'retnet'"),
    (lambda: LMConfig.tiny("gla", num_layers=3, layer_pattern=("gla", "mamba")), ValueError, "must divide"),
    (lambda: LMConfig.tiny("attention", num_kv_heads=3, num_heads=4), ValueError, "num_kv_heads=3"),
    (lambda: LMConfig.tiny("gla", implementation="cuda"), ValueError, "implementation"),
    (lambda: CausalLM(LMConfig.tiny("gla", hidden_size=1024, num_heads=2), rngs=nnx.Rngs(0)),
     ValueError, "GatedLinearAttention: the GLA kernels take head dims K, V <= 256, got K=256, V=512"),
    (lambda: CausalLM(LMConfig.tiny("lightning", head_dim=384), rngs=nnx.Rngs(0)),
     ValueError, "K, V <= 256, got K=384, V=384"),
    (lambda: CausalLM(LMConfig.tiny("mamba", d_state=300), rngs=nnx.Rngs(0)),
     ValueError, "state size N <= 256, got N=300"),
    (lambda: CausalLM(LMConfig.tiny("attention", head_dim=9), rngs=nnx.Rngs(0)),
     ValueError, "even head_dim"),
])
def test_bad_configuration_raises_at_construction(build, error, match):
    with pytest.raises(error, match=match):
        nnx.eval_shape(build) if "CausalLM" in build.__code__.co_names else build()


def test_bad_inputs_raise(rng):
    model = nnx.eval_shape(lambda: CausalLM(LMConfig.tiny("gla"), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="input_ids"):
        model(jnp.ones((2, 3), jnp.float32))
    with pytest.raises(ValueError, match="cache has 1 entries for 2 blocks"):
        model(jnp.ones((2, 3), jnp.int32), cache=(None,))


def test_config_accepts_a_list_pattern_and_stays_hashable():
    config = LMConfig.tiny("gla", layer_pattern=["gla", "mamba"])
    assert config.layer_pattern == ("gla", "mamba")
    assert hash(config) == hash(LMConfig.tiny("gla", layer_pattern=("gla", "mamba")))
    assert np.all([LMConfig.preset(n).num_layers > 0 for n in ("tiny", "tiny_mamba", "gla_340m")])


@pytest.mark.parametrize("pattern, remat", [
    pytest.param(("gla",), False, id="gla-plain"),
    pytest.param(("lightning", "attention"), True, id="lightning+attention-remat"),
    pytest.param(("mamba",), True, id="mamba-remat"),
])
def test_scanned_layers_equal_unrolled_layers(pattern, remat, rng):
    """scan_layers runs the blocks as one lax.scan: same logits and parameter gradients."""
    config = LMConfig.tiny(pattern[0], num_layers=4, layer_pattern=pattern, remat=remat)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (2, 70)))
    targets = jnp.asarray(rng.integers(0, config.vocab_size, (2, 70)))

    def loss_and_grads(scan):
        model = CausalLM(config.replace(scan_layers=scan), rngs=nnx.Rngs(3))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest)(ids)
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, targets[..., None], -1).mean(), logits

        (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return logits, jax.tree.leaves(grads)

    logits_scan, grads_scan = loss_and_grads(True)
    logits_loop, grads_loop = loss_and_grads(False)
    assert_close(logits_scan, logits_loop, dtype=jnp.float32, name="logits")
    assert len(grads_scan) == len(grads_loop) == len(jax.tree.leaves(nnx.state(
        CausalLM(config, rngs=nnx.Rngs(3)), nnx.Param)))
    for i, (a, b) in enumerate(zip(grads_scan, grads_loop, strict=True)):
        assert_close(a, b, dtype=jnp.float32, name=f"grad {i}")
