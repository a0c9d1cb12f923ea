"""Programs whose XLA FLOP count the report and the tests hold against the formulas.

* Small plain-jnp programs (`matmul`, `swiglu_mlp`, `attention_core`, ...): each takes arrays
  (or is lowered from `jax.ShapeDtypeStruct`s). Layouts: `x [tokens, D]`; attention
  `q, k, v [B, H, L, d]`; the Transformer layer takes `x [B, L, D]`.
* The real layers and models (`mixer_program`, `model_program`, `train_program`,
  `generate_program`): each returns `(fn, args)` with `args` abstract (the module is built under
  `nnx.eval_shape`: no parameter is allocated), ready for `xla.count_all(fn, *args)`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from jaxla.models import CausalLM, LMConfig, make_mixer


def matmul(a, b):
    return a @ b


def swiglu_mlp(x, w_gate, w_up, w_down):
    """`down(silu(x W_gate) * (x W_up))`: x `[T, D]`, W_gate/W_up `[D, F]`, W_down `[F, D]`."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def gelu_mlp(x, w_in, w_out):
    """`gelu(x W_in) W_out` with the tanh GELU: x `[T, D]`, W_in `[D, F]`, W_out `[F, D]`."""
    return jax.nn.gelu(x @ w_in, approximate=True) @ w_out


def rmsnorm(x, weight, eps: float = 1e-6):
    """RMSNorm over the last axis, times `weight`."""
    var = jnp.mean(x * x, axis=-1, keepdims=True)
    return x * lax.rsqrt(var + eps) * weight


def attention_core(q, k, v, *, causal: bool):
    """`softmax(q k^T / sqrt(d) [+ causal mask]) v` on `[B, H, L, d]`; the full L x L matrix."""
    L, d = q.shape[-2], q.shape[-1]
    s = jnp.einsum("bhld,bhmd->bhlm", q, k) * (d**-0.5)
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((L, L), bool)), s, -jnp.inf)
    return jnp.einsum("bhlm,bhmd->bhld", jax.nn.softmax(s, axis=-1), v)


def transformer_layer(x, wq, wk, wv, wo, w_in, w_out, *, heads: int, causal: bool):
    """Post-residual Transformer layer without norms: attention then a GELU MLP (`F = 4D`).

    x `[B, L, D]`; wq, wk, wv, wo `[D, D]`; w_in `[D, F]`, w_out `[F, D]`.
    """
    B, L, D = x.shape
    split = lambda t: t.reshape(B, L, heads, D // heads).transpose(0, 2, 1, 3)  # noqa: E731
    o = attention_core(split(x @ wq), split(x @ wk), split(x @ wv), causal=causal)
    h = x + o.transpose(0, 2, 1, 3).reshape(B, L, D) @ wo
    return h + gelu_mlp(h, w_in, w_out)


def scan_matmuls(x, w, *, steps: int):
    """`steps` chained matmuls in a `lax.scan`: XLA counts one iteration."""

    def body(c, _):
        return c @ w, None

    return lax.scan(body, x, None, length=steps)[0]


# --------------------------------------------------------------------------------------------
# The real layers and models, built abstractly.


def abstract(make: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    """`(graphdef, state)` of the module `make()` builds, under `nnx.eval_shape`: the state holds
    `jax.ShapeDtypeStruct`s, nothing is allocated."""
    return nnx.split(nnx.eval_shape(make))


def _x(config: LMConfig, batch: int, seq_len: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, seq_len, config.hidden_size), jnp.dtype(config.dtype))


def mixer_program(config: LMConfig, layer_idx: int, batch: int, seq_len: int, *,
                  cache_len: int | None = None, implementation: str = "xla"):
    """The mixer of block `layer_idx` (`make_mixer`) on `x [B, T, D]`: a forward pass, or with
    `cache_len` a pass through its decode cache (`init_cache(B, cache_len)`), which returns
    `(y, new_cache)` (a decode step for T = 1, a prefill for T > 1)."""
    graphdef, state = abstract(lambda: make_mixer(config, layer_idx, rngs=nnx.Rngs(0),
                                                  implementation=implementation))
    x = _x(config, batch, seq_len)
    if cache_len is None:
        return (lambda st, x: nnx.merge(graphdef, st)(x)), (state, x)
    cache = jax.eval_shape(lambda: nnx.merge(graphdef, state).init_cache(batch, cache_len))
    return (lambda st, x, c: nnx.merge(graphdef, st)(x, cache=c)), (state, x, cache)


def module_program(make: Callable[[], nnx.Module], x: jax.ShapeDtypeStruct):
    """Any module on one input (e.g. `SwiGLU`, `RMSNorm`)."""
    graphdef, state = abstract(make)
    return (lambda st, x: nnx.merge(graphdef, st)(x)), (state, x)


def _model(config: LMConfig, implementation: str):
    return abstract(lambda: CausalLM(config, rngs=nnx.Rngs(0), implementation=implementation))


def _ids(batch: int, seq_len: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)


def model_program(config: LMConfig, batch: int, seq_len: int, *, implementation: str = "xla"):
    """`CausalLM(config)` forward: `input_ids [B, T] -> logits [B, T, vocab]`."""
    graphdef, state = _model(config, implementation)
    return (lambda st, ids: nnx.merge(graphdef, st)(ids)), (state, _ids(batch, seq_len))


def lm_loss(logits, labels):
    """Mean next-token cross-entropy: optax's `softmax_cross_entropy_with_integer_labels`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_program(config: LMConfig, batch: int, seq_len: int, *, implementation: str = "xla"):
    """One training step's model work: the loss of `CausalLM(config)` on `[B, T]` tokens
    (labels given apart, every position scored) and its gradient for every parameter."""
    graphdef, state = _model(config, implementation)

    def loss(st, ids, labels):
        return lm_loss(nnx.merge(graphdef, st)(ids), labels)

    ids = _ids(batch, seq_len)
    return (lambda st, ids, labels: jax.value_and_grad(loss)(st, ids, labels)), (state, ids, ids)


def generate_program(config: LMConfig, batch: int, prompt_len: int, new_tokens: int, *,
                     mode: str, implementation: str = "xla"):
    """The model passes of greedy `jaxla.models.generate`, unrolled into one program (XLA's
    cost analysis counts a while_loop's body once, and generate runs its decode steps in one):
    mode="naive": pass k encodes exactly P + k tokens (generate's `naive_bucket=1`);
    mode="cached": one prefill of the prompt through caches of P + T slots (an argument of the
    program, as it is of generate's compiled prefill), then one step per new token but the
    last; an argmax after every pass."""
    graphdef, state = _model(config, implementation)

    def argmax(logits):
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    if mode == "naive":
        def run(st, prompt):
            model, seq = nnx.merge(graphdef, st), prompt
            for _ in range(new_tokens):
                seq = jnp.concatenate([seq, argmax(model(seq))[:, None]], axis=1)
            return seq

        return run, (state, _ids(batch, prompt_len))

    def run_cached(st, prompt, cache):
        model = nnx.merge(graphdef, st)
        logits, cache = model(prompt, cache=cache)
        tokens = [argmax(logits)]
        for _ in range(new_tokens - 1):
            logits, cache = model(tokens[-1][:, None], cache=cache)
            tokens.append(argmax(logits))
        return jnp.concatenate([prompt, jnp.stack(tokens, axis=1)], axis=1)

    cache = jax.eval_shape(lambda st: nnx.merge(graphdef, st).init_cache(
        batch, prompt_len + new_tokens), state)
    return run_cached, (state, _ids(batch, prompt_len), cache)
