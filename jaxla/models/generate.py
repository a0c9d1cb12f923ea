"""Autoregressive generation: one compiled decode loop over the model's cache, or the naive
re-encode baseline.

    tokens = generate(model, prompts, 64, temperature=0.8, top_p=0.95, rng=0, eos_token_id=2)
    for new in generate_stream(model, prompts, 256, block_size=16):   # [list of ints] per row
        ...

Prompts are a `[B, P]` int array or a list of B 1-D token sequences of different lengths
(ragged). Each row continues its own prompt: every row's tokens are what generating that row
alone gives (greedy: the same tokens; sampled: the same draws, see `sample_logits`). A row stops
after `max_new_tokens` tokens or after emitting `eos_token_id` (kept); the result is
`[B, max(P) + max_new_tokens]` int32, each row its prompt, its generated tokens, then
`pad_token_id` (default: eos_token_id, else 0); `return_lengths=True` also gives each row's
length (prompt + generated).

mode="cached" (default): one prefill of the tokens all prompts share in length (the shortest
prompt's), then one `lax.while_loop` (compiled once, no Python per token) feeds one position per
iteration through the model's cache (recurrent states for the linear layers: O(1) per token; a
KV cache for softmax attention). Rows whose prompt is longer are fed their own prompt tokens
(teacher forcing) until it ends, so every row sees exactly its tokens. The loop ends when every
row has stopped. `generate_stream` runs the same loop `block_size` positions per call and yields
the tokens after each call.

mode="naive": every position re-encodes the whole sequence so far (no cache), the O(T^3)
baseline, one jit call per token; same tokens as "cached" up to float rounding. The sequence is
zero-padded at the end to a multiple of `naive_bucket` so one compile serves that many lengths
(causal masking keeps the padding out of the logits read).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MODES = ("cached", "naive")


class Sampling(NamedTuple):
    """How the next token is drawn; `temperature == 0` means greedy."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None


def _filter(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """Temperature, then top_k, top_p and min_p: `-inf` for the tokens left out (`[..., V]`)."""
    logits = logits / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p is not None and sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token when the mass strictly before it is below top_p (the first always stays).
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sampling.top_p
        inverse = jnp.argsort(order, axis=-1)
        keep = jnp.take_along_axis(keep_sorted, inverse, axis=-1)
        logits = jnp.where(keep, logits, -jnp.inf)
    if sampling.min_p is not None and sampling.min_p > 0.0:
        # Keep tokens whose probability is at least min_p times the most likely one's.
        top = jnp.max(logits, axis=-1, keepdims=True)
        logits = jnp.where(logits < top + jnp.log(sampling.min_p), -jnp.inf, logits)
    return logits


def sample_logits(logits: jax.Array, key: jax.Array | None, sampling: Sampling) -> jax.Array:
    """`logits [B, V]` -> tokens `[B]` int32: argmax when greedy, else a draw from the
    temperature-scaled distribution restricted by top_k, the top_p nucleus and min_p.

    `key`: one key for the whole batch, or a `[B]` array of keys, one per row (what `generate`
    passes: row r's draw at position p uses `fold_in(fold_in(key, r), p)`, so a row's draws do not
    depend on the other rows).
    """
    logits = logits.astype(jnp.float32)
    if key is None or sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = _filter(logits, sampling)
    if key.ndim == 1:
        draw = jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(key, logits)
    else:
        draw = jax.random.categorical(key, logits, axis=-1)
    return draw.astype(jnp.int32)


def _row_keys(key, rows: jax.Array, position) -> jax.Array | None:
    if key is None:
        return None
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), position))(rows)


class _Carry(NamedTuple):
    position: jax.Array  # [] int32: the position of `token`
    token: jax.Array  # [B] int32: each row's token at `position` (its prompt's or drawn)
    cache: tuple
    out: jax.Array  # [B, max_new] int32: generated tokens so far
    count: jax.Array  # [B] int32: how many
    done: jax.Array  # [B] bool


def _place(position, drawn, prompts, lengths, out, count, done, eos, max_new):
    """The token at `position` of each row (its prompt's, else the drawn one), recorded in
    `out` when the row is generating; returns (token [B], out, count, done). eos -1: none."""
    safe = jnp.minimum(position, prompts.shape[1] - 1)
    token = jnp.where(position < lengths, prompts[:, safe], drawn)
    generating = (position >= lengths) & ~done
    slot = jnp.arange(max_new, dtype=jnp.int32)[None, :] == count[:, None]
    out = jnp.where(generating[:, None] & slot, token[:, None], out)
    count = count + generating.astype(jnp.int32)
    done = done | (count >= max_new) | (generating & (token == eos))
    return token, out, count, done


@functools.partial(jax.jit, static_argnums=(0, 4, 8, 10))
def _prefill(graphdef, state, prompts, lengths, p0, cache, key, rows, sampling, eos, max_new):
    """Run the shared prompt prefix `prompts[:, :p0]` through the cache; place position p0."""
    model = nnx.merge(graphdef, state)
    logits, cache = model(prompts[:, :p0], cache=cache)
    position = jnp.int32(p0)
    drawn = sample_logits(logits[:, -1], _row_keys(key, rows, position), sampling)
    B = prompts.shape[0]
    token, out, count, done = _place(position, drawn, prompts, lengths,
                                      jnp.zeros((B, max_new), jnp.int32),
                                      jnp.zeros(B, jnp.int32), jnp.zeros(B, bool), eos, max_new)
    return _Carry(position, token, cache, out, count, done)


@functools.partial(jax.jit, static_argnums=(0, 6, 8), donate_argnums=(2,))
def _decode(graphdef, state, carry: _Carry, prompts, lengths, limit, sampling, eos, max_new,
            key, rows):
    """Place positions `carry.position + 1 .. limit - 1`, one model step each (a while_loop),
    stopping early when every row is done."""
    model = nnx.merge(graphdef, state)

    def cond(c: _Carry):
        return (c.position + 1 < limit) & ~jnp.all(c.done)

    def body(c: _Carry):
        logits, cache = model(c.token[:, None], cache=c.cache)
        position = c.position + 1
        drawn = sample_logits(logits[:, -1], _row_keys(key, rows, position), sampling)
        token, out, count, done = _place(position, drawn, prompts, lengths, c.out, c.count,
                                         c.done, eos, max_new)
        return _Carry(position, token, cache, out, count, done)

    return jax.lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _naive_step(graphdef, state, tokens, position, keys, sampling):
    """Encode `tokens [B, S]` from scratch; draw the token at `position` (S >= position)."""
    model = nnx.merge(graphdef, state)
    logits = jax.lax.dynamic_index_in_dim(model(tokens), position - 1, axis=1, keepdims=False)
    return sample_logits(logits, keys, sampling)


class _Request(NamedTuple):
    prompts: np.ndarray  # [B, Pmax] int32, right-padded with 0
    lengths: np.ndarray  # [B] int32
    max_new: int
    sampling: Sampling
    key: jax.Array | None
    eos: int | None
    pad: int


def _request(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, min_p, rng,
             eos_token_id, pad_token_id) -> _Request:
    if isinstance(prompt_ids, (list, tuple)):
        rows = [np.asarray(p) for p in prompt_ids]
        if not rows:
            raise ValueError("prompt_ids is an empty list: give at least one prompt")
        for i, r in enumerate(rows):
            if r.ndim != 1 or r.size < 1 or not np.issubdtype(r.dtype, np.integer):
                raise ValueError(f"prompt_ids[{i}] must be a non-empty 1-D int sequence, got "
                                 f"shape {r.shape}, dtype {r.dtype} (an empty prompt has "
                                 f"nothing to continue)")
        lengths = np.array([len(r) for r in rows], np.int32)
        prompts = np.zeros((len(rows), lengths.max()), np.int32)
        for i, r in enumerate(rows):
            prompts[i, :len(r)] = r
    else:
        arr = np.asarray(prompt_ids)
        if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"prompt_ids must be an int array [B, P] with P >= 1 or a list of "
                             f"1-D sequences, got prompt_ids.shape={arr.shape}, "
                             f"prompt_ids.dtype={arr.dtype}")
        prompts = arr.astype(np.int32)
        lengths = np.full(arr.shape[0], arr.shape[1], np.int32)
    vocab = model.config.vocab_size
    if prompts.min() < 0 or prompts.max() >= vocab:
        raise ValueError(f"prompt_ids must lie in [0, vocab_size={vocab}), got ids from "
                         f"{int(prompts.min())} to {int(prompts.max())}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    for name, value in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if value is not None and not 0 <= value < vocab:
            raise ValueError(f"{name} must be in [0, vocab_size={vocab}), got {value}")
    greedy = rng is None or temperature == 0
    sampling = Sampling(0.0 if greedy else float(temperature), top_k, top_p, min_p)
    key = None if greedy else (jax.random.key(rng) if isinstance(rng, (int, np.integer))
                               else rng)
    pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
    return _Request(prompts, lengths, int(max_new_tokens), sampling, key, eos_token_id, pad)


def _assemble(req: _Request, out: np.ndarray, count: np.ndarray):
    B, P = req.prompts.shape
    tokens = np.full((B, P + req.max_new), req.pad, np.int32)
    for r in range(B):
        n, c = req.lengths[r], count[r]
        tokens[r, :n] = req.prompts[r, :n]
        tokens[r, n:n + c] = out[r, :c]
    return tokens, (req.lengths + count).astype(np.int32)


def _cached_blocks(model, req: _Request, block_size: int | None) -> Iterator[_Carry]:
    """Run the decode loop, yielding the carry after each block of positions (or once)."""
    graphdef, state = nnx.split(model)
    B, P = req.prompts.shape
    p0 = int(req.lengths.min())
    rows = jnp.arange(B, dtype=jnp.int32)
    cache = model.init_cache(B, P + req.max_new)
    prompts, lengths = jnp.asarray(req.prompts), jnp.asarray(req.lengths)
    eos = jnp.int32(-1 if req.eos is None else req.eos)
    carry = _prefill(graphdef, state, prompts, lengths, p0, cache, req.key, rows,
                     req.sampling, eos, req.max_new)
    end = P + req.max_new  # positions run up to end - 1
    step = end if block_size is None else block_size
    # The prefill placed position p0; block k places up to position p0 + k * step - 1, so a
    # rectangular batch has generated k * step tokens after it.
    limit, ran = p0, False
    while limit < end and not bool(jnp.all(carry.done)):
        limit = min(limit + step, end)
        carry = _decode(graphdef, state, carry, prompts, lengths, jnp.int32(limit),
                        req.sampling, eos, req.max_new, req.key, rows)
        ran = True
        yield carry
    if not ran:
        yield carry


def _naive(model, req: _Request, naive_bucket: int):
    graphdef, state = nnx.split(model)
    B, P = req.prompts.shape
    rows = jnp.arange(B, dtype=jnp.int32)
    total = P + req.max_new
    buffer = np.zeros((B, total + -total % naive_bucket), np.int32)
    buffer[:, :P] = req.prompts
    out = np.zeros((B, req.max_new), np.int32)
    count = np.zeros(B, np.int32)
    done = np.zeros(B, bool)
    position = int(req.lengths.min())
    while position < total and not done.all():
        width = position + -position % naive_bucket
        keys = _row_keys(req.key, rows, position)
        drawn = np.asarray(_naive_step(graphdef, state, jnp.asarray(buffer[:, :width]),
                                       jnp.int32(position), keys, req.sampling))
        x = np.where(position < req.lengths, buffer[:, position], drawn)
        generating = (position >= req.lengths) & ~done
        out[generating, count[generating]] = x[generating]
        count += generating
        done |= count >= req.max_new
        if req.eos is not None:
            done |= generating & (x == req.eos)
        buffer[:, position] = x
        position += 1
    return out, count


def generate(model, prompt_ids, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             rng=None, eos_token_id: int | None = None, pad_token_id: int | None = None,
             mode: str = "cached", naive_bucket: int = 64, return_lengths: bool = False):
    """Extend each prompt by up to `max_new_tokens` tokens (see the module docstring).

    Greedy when `temperature == 0` or `rng` is None, else sampling (temperature, then top_k,
    top_p, min_p) with keys from `rng` (a `jax.random` key or an int seed).
    Returns `tokens [B, max(P) + max_new_tokens]` int32, and with `return_lengths` also
    `lengths [B]` int32 (prompt + generated tokens of each row).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if naive_bucket < 1:
        raise ValueError(f"naive_bucket must be >= 1, got {naive_bucket}")
    req = _request(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, min_p, rng,
                   eos_token_id, pad_token_id)
    B = req.prompts.shape[0]
    if req.max_new == 0:
        out, count = np.zeros((B, 0), np.int32), np.zeros(B, np.int32)
    elif mode == "cached":
        *_, carry = _cached_blocks(model, req, None)
        out, count = np.asarray(carry.out), np.asarray(carry.count)
    else:
        out, count = _naive(model, req, naive_bucket)
    tokens, lengths = _assemble(req, out, count)
    tokens = jnp.asarray(tokens)
    return (tokens, jnp.asarray(lengths)) if return_lengths else tokens


def generate_stream(model, prompt_ids, max_new_tokens: int, *, block_size: int = 16,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, min_p: float | None = None, rng=None,
                    eos_token_id: int | None = None) -> Iterator[list[list[int]]]:
    """`generate` (mode "cached") that yields, after every `block_size` positions of the compiled
    loop (the first block counts the prefill's token), the tokens each row generated in them
    (`[B]` lists, possibly empty)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    req = _request(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, min_p, rng,
                   eos_token_id, None)
    if req.max_new == 0:
        return
    sent = np.zeros(req.prompts.shape[0], np.int64)
    for carry in _cached_blocks(model, req, block_size):
        out, count = np.asarray(carry.out), np.asarray(carry.count)
        yield [out[r, sent[r]:count[r]].tolist() for r in range(len(count))]
        sent = count.astype(np.int64)
