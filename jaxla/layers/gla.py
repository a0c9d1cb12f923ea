"""FLA's GatedLinearAttention layer (Yang et al., 2024; research/fla.md §8) over jaxla.ops.gla."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers import segments
from jaxla.layers._common import (
    RECURRENT_MAX_LEN,
    check_divides,
    check_implementation,
    check_kernel_sizes,
    compute_dtype,
    input_projections,
    linear,
    recomputed,
)
from jaxla.layers.conv import ShortConvolution
from jaxla.layers.norm import RMSNorm, rms_norm
from jaxla.ops import gla, gla_recurrent


class GLACache(NamedTuple):
    """Decode state of a `GatedLinearAttention` layer."""

    state: jax.Array  # [B, H, K, V] float32
    conv_q: jax.Array | None = None  # [B, conv_size - 1, key_dim] with short convolutions
    conv_k: jax.Array | None = None
    conv_v: jax.Array | None = None


FEATURE_MAPS = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "logsigmoid": jax.nn.log_sigmoid,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sqrelu": lambda x: jnp.square(jax.nn.relu(x)),
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedLinearAttention(nnx.Module):
    """Gated linear attention, `x [B, T, D] -> [B, T, D]`, with FLA's defaults.

    q, k: `D -> key_dim = D * expand_k`; v and the output gate g: `D -> value_dim = D * expand_v`;
    the forget gate is low rank, `D -> gate_low_rank_dim -> key_dim` (+bias), through
    `logsigmoid(.) / gate_logit_normalizer`; optional short convolutions (+silu) on q, k, v.
    With `num_kv_heads` < num_heads (FLA's grouped form) k, v and the forget gate are projected
    for num_kv_heads heads and each is repeated for `num_heads / num_kv_heads` consecutive query
    heads; `feature_map` (a key of FEATURE_MAPS) is applied to q and k per head. The
    recurrence runs per head (K = key_dim / H, V = value_dim / H); its output is RMS-normalised
    per head (one learnable `[V]` scale shared by the heads), times `swish(g)`, then
    `o_proj: value_dim -> D`. Inputs of at most RECURRENT_MAX_LEN tokens use `gla_recurrent`,
    longer ones the chunked `gla`.

    Packed documents: `__call__(x, segment_ids=ids)` (`ids [B, T]` integers,
    `jaxla.layers.segments`) runs every document as if alone: the state restarts at each
    document start and the short convolutions do not read across it.

    Decoding: `init_cache(batch_size)` -> `GLACache`; `__call__(x, cache=c)` returns
    `(y, new_cache)` for any T (prefill or one token) and costs O(T) whatever came before.
    """

    def __init__(self, hidden_size: int = 1024, *, num_heads: int = 4, expand_k: float = 0.5,
                 expand_v: float = 1.0, use_short_conv: bool = False, conv_size: int = 4,
                 conv_bias: bool = False, use_output_gate: bool = True, norm_eps: float = 1e-5,
                 gate_logit_normalizer: float = 16.0, gate_low_rank_dim: int = 16,
                 clamp_min: float | None = None, num_kv_heads: int | None = None,
                 feature_map: str | None = None, implementation: str | None = None,
                 initializer_range: float = 0.02, rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32):
        name = "GatedLinearAttention"
        check_implementation(implementation)
        self.key_dim = int(hidden_size * expand_k)
        self.value_dim = int(hidden_size * expand_v)
        check_divides(name, "num_heads", num_heads, "key_dim", self.key_dim)
        check_divides(name, "num_heads", num_heads, "value_dim", self.value_dim)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_divides(name, "num_kv_heads", num_kv_heads, "num_heads", num_heads)
        if feature_map is not None and feature_map not in FEATURE_MAPS:
            raise ValueError(f"{name}: feature_map must be None or one of {tuple(FEATURE_MAPS)}, "
                             f"got {feature_map!r}")
        self.num_kv_heads = num_kv_heads
        self.feature_map = feature_map
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_k_dim = self.key_dim // num_heads
        self.head_v_dim = self.value_dim // num_heads
        check_kernel_sizes(name, "gla", implementation, head_dim_k=self.head_k_dim,
                           head_dim_v=self.head_v_dim)
        if gate_logit_normalizer <= 0:
            raise ValueError(f"{name}: gate_logit_normalizer must be > 0, "
                             f"got {gate_logit_normalizer}")
        self.use_short_conv = use_short_conv
        self.use_output_gate = use_output_gate
        self.gate_logit_normalizer = gate_logit_normalizer
        self.clamp_min = clamp_min
        self.implementation = implementation
        self.dtype = dtype

        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stddev=initializer_range)
        groups = num_heads // num_kv_heads
        kv_key_dim, kv_value_dim = self.key_dim // groups, self.value_dim // groups
        self.q_proj = linear(hidden_size, self.key_dim, **kw)
        self.k_proj = linear(hidden_size, kv_key_dim, **kw)
        self.v_proj = linear(hidden_size, kv_value_dim, **kw)
        self.g_proj = linear(hidden_size, self.value_dim, **kw) if use_output_gate else None
        self.gk_proj = nnx.Sequential(
            linear(hidden_size, gate_low_rank_dim, **kw),
            linear(gate_low_rank_dim, kv_key_dim, use_bias=True, **kw),
        )
        self.o_proj = linear(self.value_dim, hidden_size, **kw)
        if use_short_conv:
            conv = lambda c: ShortConvolution(  # noqa: E731
                c, conv_size, use_bias=conv_bias, activation="silu", rngs=rngs, dtype=dtype,
                param_dtype=param_dtype, kernel_init=nnx.initializers.normal(initializer_range))
            self.q_conv1d = conv(self.key_dim)
            self.k_conv1d = conv(kv_key_dim)
            self.v_conv1d = conv(kv_value_dim)
        else:
            self.q_conv1d = self.k_conv1d = self.v_conv1d = None
        self.g_norm = RMSNorm(self.head_v_dim, eps=norm_eps, param_dtype=param_dtype)

    def init_cache(self, batch_size: int, max_len: int | None = None) -> GLACache:
        """A zero state (max_len is ignored: the state does not grow)."""
        del max_len
        shape = (batch_size, self.num_heads, self.head_k_dim, self.head_v_dim)
        state = jnp.zeros(shape, jnp.float32)
        if not self.use_short_conv:
            return GLACache(state)
        return GLACache(state, *(c.init_cache(batch_size) for c in
                                 (self.q_conv1d, self.k_conv1d, self.v_conv1d)))

    def __call__(self, x: jax.Array, cache: GLACache | None = None, *, segment_ids=None,
                 norm=None):
        B, T, D = x.shape
        if D != self.hidden_size:
            raise ValueError(f"GatedLinearAttention({self.hidden_size}) got {x.shape=}")
        segments.check("GatedLinearAttention", segment_ids, B, T, cache)
        cd = compute_dtype(self.dtype, x, norm)
        # Of the low-rank forget gate only the first projection reads the input.
        q, k, v, gk_low, gate = input_projections(
            x, norm, self.q_proj, self.k_proj, self.v_proj, self.gk_proj.layers[0],
            self.g_proj if self.use_output_gate else None)
        convs = (None, None, None)
        if self.use_short_conv:
            if cache is None:
                q, k, v = (conv(a, segment_ids=segment_ids) for conv, a in
                           ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
            else:
                (q, cq), (k, ck), (v, cv) = (
                    self.q_conv1d(q, cache.conv_q), self.k_conv1d(k, cache.conv_k),
                    self.v_conv1d(v, cache.conv_v))
                convs = (cq, ck, cv)

        def log_decays(logits):
            gk = jax.nn.log_sigmoid(logits.astype(jnp.float32)) / self.gate_logit_normalizer
            return gk if self.clamp_min is None else jnp.maximum(gk, self.clamp_min)

        # Recomputed: the backward keeps the compute-dtype logits, not float32 activations.
        gk = recomputed(log_decays)(self.gk_proj.layers[1](gk_low))

        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        G = H // self.num_kv_heads
        q, k, gk = (a.reshape(B, T, -1, K) for a in (q, k, gk))
        v = v.reshape(B, T, -1, V)
        if G > 1:  # each kv head serves G consecutive query heads
            k, gk, v = (jnp.repeat(a, G, axis=2) for a in (k, gk, v))
        if self.feature_map is not None:
            fmap = FEATURE_MAPS[self.feature_map]
            q, k = (fmap(a.astype(jnp.float32)).astype(cd) for a in (q, k))
        op = gla_recurrent if T <= RECURRENT_MAX_LEN else gla
        o, state = op(q.astype(cd), k.astype(cd), v.astype(cd), gk,
                      initial_state=None if cache is None else cache.state,
                      output_final_state=cache is not None, segment_ids=segment_ids,
                      implementation=self.implementation)

        def norm_and_gate(o, gate, weight):
            o = rms_norm(o, weight, self.g_norm.eps)
            if gate is not None:
                o = o * jax.nn.silu(gate.astype(jnp.float32).reshape(B, T, H, V))
            return o.astype(cd)

        o = recomputed(norm_and_gate)(o, gate, self.g_norm.weight[...])
        y = self.o_proj(o.reshape(B, T, self.value_dim))
        if cache is None:
            return y
        return y, GLACache(state, *convs)
