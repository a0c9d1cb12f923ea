"""Autoregressive generation: `cached` (recurrent state / KV cache) or `naive` (re-encode all)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

MODES = ("cached", "naive")


class Sampling(NamedTuple):
    """How the next token is drawn; `temperature == 0` means greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def sample_logits(logits: jax.Array, key: jax.Array | None, sampling: Sampling) -> jax.Array:
    """`logits [B, V]` -> tokens `[B]` int32: argmax when greedy, else a draw from the
    temperature-scaled distribution restricted to the top_k tokens and the top_p nucleus."""
    logits = logits.astype(jnp.float32)
    if key is None or sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token when the mass strictly before it is below top_p (the first always stays).
        before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = before < sampling.top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _cached_step(graphdef, state, tokens, cache, key, sampling):
    """Run `tokens [B, T]` through the model with its cache; sample the next token."""
    model = nnx.merge(graphdef, state)
    logits, cache = model(tokens, cache=cache)
    return sample_logits(logits[:, -1], key, sampling), cache


@functools.partial(jax.jit, static_argnums=(0, 5))
def _naive_step(graphdef, state, tokens, length, key, sampling):
    """Encode `tokens [B, S]` from scratch; sample the token after position `length - 1`."""
    model = nnx.merge(graphdef, state)
    logits = jax.lax.dynamic_index_in_dim(model(tokens), length - 1, axis=1, keepdims=False)
    return sample_logits(logits, key, sampling)


def generate(model, prompt_ids, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, rng=None,
             mode: str = "cached", naive_bucket: int = 64) -> jax.Array:
    """Extend `prompt_ids [B, P]` by `max_new_tokens` tokens -> `[B, P + max_new_tokens]` int32.

    Greedy when `temperature == 0` or `rng` is None, else sampling (temperature, then top_k, then
    top_p) with a key drawn per token from `rng` (a `jax.random` key or an int seed).

    mode="cached": one prefill of the prompt, then one jit-compiled step per token through the
    model's cache (recurrent states for linear layers: O(1) per token; KV cache for attention).
    mode="naive": every token re-encodes the whole sequence so far (no cache), the O(T^3)
    baseline. The sequence is zero-padded at the end to a multiple of `naive_bucket` tokens so
    one compile serves that many lengths; causal masking keeps the padding out of the logits
    read (position t - 1). `naive_bucket=1` encodes exactly t tokens at step t.
    The two modes draw the same keys, so they produce the same tokens up to float rounding.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prompt_ids = jnp.asarray(prompt_ids)
    is_int = jnp.issubdtype(prompt_ids.dtype, jnp.integer)
    if prompt_ids.ndim != 2 or prompt_ids.shape[1] < 1 or not is_int:
        raise ValueError(f"prompt_ids must be an int array [B, P] with P >= 1, got "
                         f"{prompt_ids.shape=}, {prompt_ids.dtype=}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if naive_bucket < 1:
        raise ValueError(f"naive_bucket must be >= 1, got {naive_bucket}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    prompt_ids = prompt_ids.astype(jnp.int32)
    if max_new_tokens == 0:
        return prompt_ids
    greedy = rng is None or temperature == 0
    sampling = Sampling(0.0 if greedy else float(temperature), top_k, top_p)
    if greedy:
        keys = [None] * max_new_tokens
    else:
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        keys = list(jax.random.split(key, max_new_tokens))

    graphdef, state = nnx.split(model)
    B, P = prompt_ids.shape
    out = [prompt_ids]
    if mode == "cached":
        cache = model.init_cache(B, P + max_new_tokens)
        token, cache = _cached_step(graphdef, state, prompt_ids, cache, keys[0], sampling)
        out.append(token[:, None])
        for i in range(1, max_new_tokens):
            token, cache = _cached_step(graphdef, state, token[:, None], cache, keys[i], sampling)
            out.append(token[:, None])
    else:
        total = P + max_new_tokens
        buffer = jnp.zeros((B, total + -total % naive_bucket), jnp.int32).at[:, :P].set(prompt_ids)
        for i in range(max_new_tokens):
            t = P + i
            width = t + -t % naive_bucket
            token = _naive_step(graphdef, state, buffer[:, :width], jnp.int32(t), keys[i], sampling)
            buffer = buffer.at[:, t].set(token)
        return buffer[:, :total]
    return jnp.concatenate(out, axis=1)
