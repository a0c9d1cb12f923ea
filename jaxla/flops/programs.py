"""Small plain-jnp programs whose XLA FLOP count the report holds against the formulas.

Each takes arrays (or is lowered from `jax.ShapeDtypeStruct`s: nothing is allocated). Layouts:
`x [tokens, D]`; attention `q, k, v [B, H, L, d]`; the Transformer layer takes `x [B, L, D]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


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
