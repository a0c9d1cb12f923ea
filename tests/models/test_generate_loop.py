"""The compiled decode loop: ragged prompts and EOS equal one-by-one generation, streaming,
min_p, bad prompts."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxla.models import CausalLM, LMConfig, Sampling, generate, generate_stream, sample_logits
from tests.conftest import SEED

generate_module = sys.modules["jaxla.models.generate"]


@pytest.fixture(scope="module")
def hybrid():
    seed = int(np.random.default_rng([SEED, 1]).integers(1 << 30))  # replayable with the seed
    # A recurrent (Mamba: conv + SSM state) and a KV-cache (attention) layer.
    config = LMConfig.tiny("hybrid", num_layers=2, layer_pattern=("mamba", "attention"),
                           initializer_range=0.2)
    return CausalLM(config, rngs=nnx.Rngs(seed))


def _prompts(rng, lengths):
    return [rng.integers(0, 256, n).astype(np.int32) for n in lengths]


def test_ragged_batch_with_eos_equals_one_by_one(hybrid, rng):
    prompts = _prompts(rng, (3, 7, 1))
    new = 6
    alone = [np.asarray(generate(hybrid, [p], new))[0] for p in prompts]
    # EOS: a token row 1 emits for the first time as its j-th new token, j = 2 where it can (had
    # it emitted the token before, the row would end at that earlier copy).
    gen1 = alone[1][len(prompts[1]):]
    j = next((i for i in (2, 1) if gen1[i] not in gen1[:i]), 0)
    eos = int(gen1[j])
    tokens, lengths = generate(hybrid, prompts, new, eos_token_id=eos, return_lengths=True)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    assert tokens.shape == (3, 7 + new)
    for r, p in enumerate(prompts):
        one, n = generate(hybrid, [p], new, eos_token_id=eos, return_lengths=True)
        n = int(n[0])
        assert lengths[r] == n
        np.testing.assert_array_equal(tokens[r, :n], np.asarray(one)[0, :n])
        assert (tokens[r, n:] == eos).all()  # padding after the row stopped
        gen = tokens[r, len(p):n]
        assert len(gen) == new or gen[-1] == eos
        assert eos not in gen[:-1]
    assert lengths[1] == len(prompts[1]) + j + 1


def test_naive_mode_agrees_on_ragged_prompts_with_eos(hybrid, rng):
    prompts = _prompts(rng, (2, 4))
    kw = dict(eos_token_id=5, return_lengths=True)
    cached = generate(hybrid, prompts, 3, **kw)
    naive = generate(hybrid, prompts, 3, mode="naive", naive_bucket=8, **kw)
    for a, b in zip(cached, naive, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampled_rows_do_not_depend_on_the_batch(hybrid, rng):
    prompts = _prompts(rng, (4, 4))
    kw = dict(temperature=1.5, top_k=100, min_p=0.01, rng=11)
    both = np.asarray(generate(hybrid, prompts, 6, **kw))
    first = np.asarray(generate(hybrid, prompts[:1], 6, **kw))
    np.testing.assert_array_equal(both[0], first[0])


def test_stream_yields_blocks_of_the_same_tokens(hybrid, rng, monkeypatch):
    prompts = _prompts(rng, (3, 6))
    full = np.asarray(generate(hybrid, prompts, 10))
    calls = []
    real = generate_module._decode
    monkeypatch.setattr(generate_module, "_decode", lambda *a: calls.append(1) or real(*a))
    generate(hybrid, prompts, 10)
    assert len(calls) == 1  # one compiled loop for all the tokens
    blocks = list(generate_stream(hybrid, prompts, 10, block_size=4))
    assert len(calls) == 1 + len(blocks) and len(blocks) >= 3
    for r, p in enumerate(prompts):
        got = [t for block in blocks for t in block[r]]
        np.testing.assert_array_equal(got, full[r, len(p):len(p) + 10])


def test_min_p_keeps_tokens_within_a_factor_of_the_best(rng):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.log(probs)[None].repeat(3000, 0), jnp.float32)
    key = jax.random.key(int(rng.integers(1 << 30)))
    draws = np.asarray(sample_logits(logits, key, Sampling(1.0, None, None, 0.2)))
    assert set(draws) == {0, 1, 2}  # 0.05 < 0.2 * 0.5
    assert abs(np.mean(draws == 2) - 0.15 / 0.95) < 0.03


@pytest.mark.parametrize("prompts, match", [
    ([np.array([1, 2]), np.array([], np.int32)], r"prompt_ids\[1\] must be a non-empty"),
    ([], "empty list"),
    (np.zeros((2, 0), np.int32), "P >= 1"),
    ([np.array([300])], "vocab_size=256"),
])
def test_bad_prompts_raise_one_clear_error(hybrid, prompts, match):
    with pytest.raises(ValueError, match=match):
        generate(hybrid, prompts, 3)
