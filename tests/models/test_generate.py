"""generate: cached and naive modes agree (greedy and sampled); the sampling filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxla.models import CausalLM, LMConfig, Sampling, generate, sample_logits


def _model(kind, rng, **overrides):
    return CausalLM(LMConfig.tiny(kind, **overrides), rngs=nnx.Rngs(int(rng.integers(1 << 30))))


def _prompt(rng, B, P):
    return jnp.asarray(rng.integers(0, 256, (B, P)), jnp.int32)


@pytest.mark.parametrize("kind, P, new", [("hybrid", 5, 6), ("gla", 66, 4)],
                         ids=["hybrid-short-prompt", "gla-chunked-prompt"])
def test_cached_and_naive_greedy_tokens_are_identical(kind, P, new, rng):
    model = _model(kind, rng, use_short_conv=kind == "gla")
    prompt = _prompt(rng, 2, P)
    cached = generate(model, prompt, new, mode="cached")
    naive = generate(model, prompt, new, mode="naive", temperature=0.0, rng=jax.random.key(0))
    assert cached.shape == (2, P + new) and cached.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cached[:, :P]), np.asarray(prompt))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(naive))


def test_naive_bucket_does_not_change_tokens(rng):
    model = _model("attention", rng)
    prompt = _prompt(rng, 1, 3)
    exact = generate(model, prompt, 3, mode="naive", naive_bucket=1)
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 3, mode="naive")),
                                  np.asarray(exact))


def test_sampling_is_reproducible_and_mode_independent(rng):
    model = _model("gla", rng)
    prompt = _prompt(rng, 2, 4)
    kw = dict(temperature=1.3, top_k=50, top_p=0.95, rng=7)
    a = generate(model, prompt, 5, mode="cached", **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(generate(model, prompt, 5, mode="naive", **kw)))
    b = generate(model, prompt, 5, mode="cached", **{**kw, "rng": 8})
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # 10 near-uniform draws over ~50 tokens
    greedy = generate(model, prompt, 5)
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 5, top_k=1, rng=3)),
                                  np.asarray(greedy))


def test_sample_logits_filters(rng):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.log(probs)[None].repeat(4000, 0), jnp.float32)
    draw = lambda s: np.asarray(sample_logits(logits, jax.random.key(int(rng.integers(1 << 30))), s))  # noqa: E731
    top_p = draw(Sampling(1.0, None, 0.7))  # mass before tokens 0, 1, 2: 0, 0.5, 0.8
    assert set(top_p) == {0, 1}
    assert abs(np.mean(top_p == 0) - 0.5 / 0.8) < 0.03
    assert set(draw(Sampling(1.0, 3, None))) == {0, 1, 2}
    cold = draw(Sampling(0.05, None, None))  # temperature 0.05: p1/p0 = 0.6^20 ~ 4e-5
    assert np.mean(cold == 0) > 0.99
    full = draw(Sampling(1.0, None, None))
    assert abs(np.mean(full == 3) - 0.05) < 0.015
    np.testing.assert_array_equal(sample_logits(logits[:2], None, Sampling()), [0, 0])


def test_generate_arguments(rng):
    model = _model("gla", rng)
    prompt = _prompt(rng, 1, 3)
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 0)), np.asarray(prompt))
    for kwargs, match in [(dict(mode="beam"), "mode"), (dict(top_k=0), "top_k"),
                          (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
                          (dict(mode="naive", naive_bucket=0), "naive_bucket")]:
        with pytest.raises(ValueError, match=match):
            generate(model, prompt, 2, **kwargs)
    with pytest.raises(ValueError, match="prompt_ids"):
        generate(model, prompt[0], 2)
