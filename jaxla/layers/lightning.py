"""MiniMax-01's lightning attention layer (research/fla.md §10.3) over lightning_attention."""

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
from jaxla.layers.norm import RMSNorm, rms_norm
from jaxla.ops import simple_gla, simple_gla_recurrent
from jaxla.ops.lightning import DECAYS, default_scale, lightning_decay


class LightningCache(NamedTuple):
    """Decode state of a `LightningAttention` layer."""

    state: jax.Array  # [B, H, d_h, d_h] float32


class FixedDecay(nnx.Variable):
    """A per-head log-decay set by the layer's depth: state, but not trained (not an nnx.Param).

    Holding it as an array rather than as the Python int `layer_idx` keeps every lightning layer's
    graph structure the same, so a model can scan over its layers.
    """


class LightningAttention(nnx.Module):
    """Linear attention with a constant per-head decay, `x [B, T, D] -> [B, T, D]`.

    MiniMax-Text-01's layer: `silu(qkv_proj(x))` read as `[B, T, H, 3 d_h]` and split into q, k, v;
    `S_t = lambda_h S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t` with the decay of `layer_idx` in a
    `num_layers` stack (`decay`: "minimax", MiniMax's ALiBi-slope rates, no scale; or "fla",
    fla-core's `chunk_lightning_attn`, scale d_h^-0.5); RMSNorm over all `H d_h` channels, times
    `sigmoid(output_gate(x))`, then `out_proj: H d_h -> D`. No biases. Inputs of at most
    RECURRENT_MAX_LEN tokens use the recurrent op, longer ones the chunked op.

    Packed documents: `__call__(x, segment_ids=ids)` (`ids [B, T]` integers,
    `jaxla.layers.segments`) restarts the state at every document start.

    Decoding: `init_cache(batch_size)` -> `LightningCache`; `__call__(x, cache=c)` returns
    `(y, new_cache)` for any T.
    """

    def __init__(self, hidden_size: int = 1024, *, num_heads: int = 8, head_dim: int | None = None,
                 layer_idx: int = 0, num_layers: int = 1, decay: str = "minimax",
                 scale: float | None = None, norm_eps: float = 1e-6,
                 implementation: str | None = None, initializer_range: float = 0.02,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        name = "LightningAttention"
        check_implementation(implementation)
        if decay not in DECAYS:
            raise ValueError(f"{name}: decay must be one of {DECAYS}, got {decay!r}")
        if head_dim is None:
            check_divides(name, "num_heads", num_heads, "hidden_size", hidden_size)
            head_dim = hidden_size // num_heads
        check_kernel_sizes(name, "lightning_attention", implementation, head_dim_k=head_dim,
                           head_dim_v=head_dim)
        if not 0 <= layer_idx < num_layers:
            raise ValueError(f"{name}: layer_idx must be in [0, num_layers), "
                             f"got {layer_idx=}, {num_layers=}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.decay = decay
        self.scale = default_scale(decay, head_dim) if scale is None else scale
        self.g_gamma = FixedDecay(jnp.asarray(lightning_decay(num_heads, layer_idx, num_layers,
                                                              decay)))
        self.implementation = implementation
        self.dtype = dtype
        inner = num_heads * head_dim
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stddev=initializer_range)
        self.qkv_proj = linear(hidden_size, 3 * inner, **kw)
        self.output_gate = linear(hidden_size, inner, **kw)
        self.norm = RMSNorm(inner, eps=norm_eps, param_dtype=param_dtype)
        self.out_proj = linear(inner, hidden_size, **kw)

    def init_cache(self, batch_size: int, max_len: int | None = None) -> LightningCache:
        """A zero state (max_len is ignored: the state does not grow)."""
        del max_len
        return LightningCache(jnp.zeros(
            (batch_size, self.num_heads, self.head_dim, self.head_dim), jnp.float32))

    def __call__(self, x: jax.Array, cache: LightningCache | None = None, *, segment_ids=None,
                 norm=None):
        B, T, D = x.shape
        if D != self.hidden_size:
            raise ValueError(f"LightningAttention({self.hidden_size}) got {x.shape=}")
        segments.check("LightningAttention", segment_ids, B, T, cache)
        cd = compute_dtype(self.dtype, x, norm)
        H, d = self.num_heads, self.head_dim
        qkv, gate = input_projections(x, norm, self.qkv_proj, self.output_gate)
        qkv = recomputed(lambda a: jax.nn.silu(a.astype(jnp.float32)).astype(cd))(qkv)
        qkv = qkv.reshape(B, T, H, 3 * d)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        op = simple_gla_recurrent if T <= RECURRENT_MAX_LEN else simple_gla
        o, state = op(q, k, v, g_gamma=self.g_gamma[...], scale=self.scale,
                      initial_state=None if cache is None else cache.state,
                      output_final_state=cache is not None, segment_ids=segment_ids,
                      implementation=self.implementation)
        o = recomputed(lambda o, gate, weight: (
            rms_norm(o, weight, self.norm.eps) * jax.nn.sigmoid(gate.astype(jnp.float32))
        ).astype(cd))(o.reshape(B, T, H * d), gate, self.norm.weight[...])
        y = self.out_proj(o)
        if cache is None:
            return y
        return y, LightningCache(state)
