"""FLOPs of generating T tokens: naive re-encoding, KV cache, recurrent state, as exact sums.

Convention (what `jaxla.models.generate` does): a prompt of P >= 1 tokens, then T new tokens.
Pass k = 0..T-1 produces new token k + 1 from positions 1..P+k.

* mode="naive": every pass re-runs the model on the whole sequence:
  `sum_{m=P}^{P+T-1} forward(m)`. Per layer of a Transformer (dense `24D^2` per token, attention
  `4 D m^2` for the full m x m score matrix XLA computes, `2 D m (m+1)` for the triangle) this is
  `O(T^2)` dense work and `O(T^3)` attention work.
* mode="cached": the prompt is encoded once (`prefill(P)`), then each new position n = P+1 ..
  P+T-1 is one decode step: `prefill(P) + sum_{n=P+1}^{P+T-1} step(n)`. For attention the step
  reads a KV cache of n keys (itself included): `24D^2 + 4Dn` per layer, `O(T^2)` in total.
  For GLA, Lightning and Mamba the step updates a fixed-size recurrent state: constant per token,
  `O(T)` in total.
* `jaxla.models.generate(mode="cached")` preallocates its KV cache (P + T slots) and reads all of
  it in the prefill and in every step, the unused slots masked: `kv_cache="preallocated"` counts
  that, P + T keys per step instead of n (about twice the exact KV-cache attention work of a
  long generation, still O(T^2)).

With P = 1 these are the sums of research/flops.md §6.3 over n = 1..T (e.g. KV cache:
`24D^2 T + 2D T(T+1)` per layer). `sum_naive` / `sum_cached` take any per-pass cost function, so
tests can hold them against XLA counts of small unrolled decode programs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

from jaxla.flops import formulas as F
from jaxla.flops.formulas import Conventions, Flops
from jaxla.models.config import LMConfig

Mode = Literal["naive", "cached"]
Logits = Literal["all", "last"]
KVCache = Literal["exact", "preallocated"]
Sampling = Literal["greedy"] | None
MODES: tuple[str, ...] = ("naive", "cached")
KV_CACHES: tuple[str, ...] = ("exact", "preallocated")


def _check(new_tokens: int, prompt_len: int) -> None:
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens=}")
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1 (a BOS token at least), got {prompt_len=}")


def sum_naive(forward: Callable[[int], Flops], new_tokens: int, prompt_len: int = 1) -> Flops:
    """`sum_{m=P}^{P+T-1} forward(m)`: re-encode the whole sequence for every new token."""
    _check(new_tokens, prompt_len)
    return sum((forward(m) for m in range(prompt_len, prompt_len + new_tokens)), F.ZERO)


def sum_cached(prefill: Callable[[int], Flops], step: Callable[[int], Flops], new_tokens: int,
               prompt_len: int = 1) -> Flops:
    """`prefill(P) + sum_{n=P+1}^{P+T-1} step(n)`: encode the prompt once, then one step per
    new position n (which attends n positions, itself included)."""
    _check(new_tokens, prompt_len)
    steps = (step(n) for n in range(prompt_len + 1, prompt_len + new_tokens))
    return prefill(prompt_len) + sum(steps, F.ZERO)


def sample_flops(batch: int, vocab: int, sampling: Sampling = None) -> Flops:
    """Drawing the next token from one row of logits per sequence. "greedy": `jnp.argmax`, which
    XLA counts as a variadic (value, index) reduce, 9 FLOPs per comparison, V - 1 comparisons per
    row. None: not counted (the model's FLOPs only)."""
    if sampling is None:
        return F.ZERO
    if sampling == "greedy":
        return Flops(other=9 * batch * (vocab - 1))
    raise ValueError(f"sampling must be None or 'greedy', got {sampling!r}")


def model_step(config: LMConfig, position: int, *, batch: int = 1,
               cache_len: int | None = None) -> Flops:
    """One decode step of the whole model for the token at `position` (1-based): the embedding,
    every mixer's step (KV cache or recurrent state), norms, MLPs, the final norm and one row of
    logits. cache_len: see `formulas.mixer_step` (None: an exact KV cache of `position` keys)."""
    out = F.embedding(batch, config.hidden_size)
    out += sum((F.mixer_step(kind, config, batch, position, cache_len=cache_len) * n
                for kind, n in Counter(config.mixers).items()), F.ZERO)
    out += F.block_extras(config, batch) * config.num_layers
    out += F.rmsnorm(batch, config.hidden_size)
    return out + F.lm_head(batch, config.hidden_size, config.vocab_size)


def model_pass(config: LMConfig, seq_len: int, *, batch: int = 1, logits: Logits = "all",
               conventions: Conventions | None = None, cache_len: int | None = None) -> Flops:
    """One forward pass over `seq_len` positions (the naive pass, or the prefill). cache_len:
    the pass runs through decode caches of that many slots (see `formulas.mixer_layer`)."""
    logits_tokens = batch * seq_len if logits == "all" else batch
    if cache_len is None:
        return F.model_forward(config, batch, seq_len, logits_tokens=logits_tokens,
                               conventions=conventions)
    tokens = batch * seq_len
    out = F.embedding(tokens, config.hidden_size)
    out += sum((F.mixer_layer(kind, config, batch, seq_len, conventions=conventions,
                              cache_len=cache_len) * n
                for kind, n in Counter(config.mixers).items()), F.ZERO)
    out += F.block_extras(config, tokens) * config.num_layers
    out += F.rmsnorm(tokens, config.hidden_size)
    return out + F.lm_head(logits_tokens, config.hidden_size, config.vocab_size)


def _cached_terms(config, new_tokens, prompt_len, batch, logits, conventions, kv_cache):
    """(prefill, step(n)) of mode="cached" under the `kv_cache` convention."""
    if kv_cache == "exact":
        cache_len = None
    elif kv_cache == "preallocated":
        cache_len = prompt_len + new_tokens
    else:
        raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
    prefill = model_pass(config, prompt_len, batch=batch, logits=logits, conventions=conventions,
                         cache_len=cache_len)
    return prefill, lambda n: model_step(config, n, batch=batch, cache_len=cache_len)


def generation_flops(config: LMConfig, new_tokens: int, *, mode: Mode, prompt_len: int = 1,
                     batch: int = 1, logits: Logits = "all",
                     conventions: Conventions | None = None, kv_cache: KVCache = "exact",
                     sampling: Sampling = None) -> Flops:
    """FLOPs to generate `new_tokens` tokens after a `prompt_len`-token prompt.

    Args:
      mode: "naive" (re-encode every pass) or "cached" (prefill, then KV cache for attention
        layers and recurrent state for linear layers).
      logits: "all" (every forward pass computes logits for all its positions, as `CausalLM`
        does) or "last" (only the position that is sampled).
      conventions: counting choices (`formulas.Conventions`): attention "causal" triangle by
        default, "full" for the matrix, `formulas.XLA_PATH` for what jaxla's layers run on XLA.
      kv_cache: "exact" (a step attends the keys that exist) or "preallocated" (what
        `jaxla.models.generate` runs: a KV cache of `prompt_len + new_tokens` slots, all read by
        the prefill and by every step, the unused ones masked; also sends a one-token prompt
        through Mamba's one-step path).
      sampling: None (model FLOPs only) or "greedy" (+ the argmax of every pass).
    """
    pick = sample_flops(batch, config.vocab_size, sampling) * new_tokens
    if mode == "naive":
        return pick + sum_naive(lambda m: model_pass(config, m, batch=batch, logits=logits,
                                                     conventions=conventions),
                                new_tokens, prompt_len)
    if mode == "cached":
        _check(new_tokens, prompt_len)
        prefill, step = _cached_terms(config, new_tokens, prompt_len, batch, logits,
                                      conventions, kv_cache)
        return pick + sum_cached(lambda p: prefill, step, new_tokens, prompt_len)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def generation_curve(config: LMConfig, new_tokens: Sequence[int], *, mode: Mode,
                     prompt_len: int = 1, batch: int = 1, logits: Logits = "all",
                     conventions: Conventions | None = None) -> list[Flops]:
    """`generation_flops` for several T at once (one pass over positions, prefix sums; exact KV
    cache, no sampling)."""
    targets = sorted(set(int(t) for t in new_tokens))
    if not targets or targets[0] < 1:
        raise ValueError(f"new_tokens must all be >= 1, got {list(new_tokens)}")
    _check(targets[0], prompt_len)
    out: dict[int, Flops] = {}
    if mode == "naive":
        def term(k):
            return model_pass(config, prompt_len + k, batch=batch, logits=logits,
                              conventions=conventions)
        acc = F.ZERO
    elif mode == "cached":
        def term(k):
            return model_step(config, prompt_len + k, batch=batch)
        acc = model_pass(config, prompt_len, batch=batch, logits=logits, conventions=conventions)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    want = iter(targets)
    target = next(want)
    for k in range(targets[-1]):
        if mode == "naive" or k > 0:
            acc = acc + term(k)
        if k + 1 == target:  # passes 0..k done: k + 1 new tokens
            out[target] = acc
            target = next(want, None)
    return [out[int(t)] for t in new_tokens]
