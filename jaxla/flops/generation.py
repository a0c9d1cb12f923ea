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
MODES: tuple[str, ...] = ("naive", "cached")


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


def model_step(config: LMConfig, position: int, *, batch: int = 1) -> Flops:
    """One decode step of the whole model for the token at `position` (1-based): every mixer's
    step (KV cache or recurrent state), norms, MLPs, the final norm and one row of logits."""
    out = sum((F.mixer_step(kind, config, batch, position) * n
               for kind, n in Counter(config.mixers).items()), F.ZERO)
    out += F.block_extras(config, batch) * config.num_layers
    out += F.rmsnorm(batch, config.hidden_size)
    return out + F.lm_head(batch, config.hidden_size, config.vocab_size)


def model_pass(config: LMConfig, seq_len: int, *, batch: int = 1, logits: Logits = "all",
               conventions: Conventions | None = None) -> Flops:
    """One forward pass over `seq_len` positions (the naive pass, or the prefill)."""
    logits_tokens = batch * seq_len if logits == "all" else batch
    return F.model_forward(config, batch, seq_len, logits_tokens=logits_tokens,
                           conventions=conventions)


def generation_flops(config: LMConfig, new_tokens: int, *, mode: Mode, prompt_len: int = 1,
                     batch: int = 1, logits: Logits = "all",
                     conventions: Conventions | None = None) -> Flops:
    """FLOPs to generate `new_tokens` tokens after a `prompt_len`-token prompt.

    Args:
      mode: "naive" (re-encode every pass) or "cached" (prefill, then KV cache for attention
        layers and recurrent state for linear layers).
      logits: "all" (every forward pass computes logits for all its positions, as `CausalLM`
        does) or "last" (only the position that is sampled).
      conventions: counting choices (`formulas.Conventions`): attention "causal" triangle by
        default, "full" for the matrix XLA computes.
    """
    if mode == "naive":
        return sum_naive(lambda m: model_pass(config, m, batch=batch, logits=logits,
                                              conventions=conventions), new_tokens, prompt_len)
    if mode == "cached":
        return sum_cached(
            lambda p: model_pass(config, p, batch=batch, logits=logits, conventions=conventions),
            lambda n: model_step(config, n, batch=batch), new_tokens, prompt_len)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def generation_curve(config: LMConfig, new_tokens: Sequence[int], *, mode: Mode,
                     prompt_len: int = 1, batch: int = 1, logits: Logits = "all",
                     conventions: Conventions | None = None) -> list[Flops]:
    """`generation_flops` for several T at once (one pass over positions, prefix sums)."""
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
