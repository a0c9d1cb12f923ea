"""Softmax attention with RoPE and grouped KV heads, through `jax.nn.dot_product_attention`."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers import segments
from jaxla.layers._common import check_divides, compute_dtype, input_projections, linear
from jaxla.layers.rope import apply_rope

ATTENTION_IMPLEMENTATIONS = (None, "cudnn", "xla", "pallas", "naive")
CUDNN_MAX_HEAD_DIM = 256


class KVCache(NamedTuple):
    """Preallocated keys and values of an `Attention` layer and how many positions hold data."""

    k: jax.Array  # [B, max_len, KVH, Dh]
    v: jax.Array  # [B, max_len, KVH, Dh]
    length: jax.Array  # [] int32


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


class Attention(nnx.Module):
    """Causal softmax attention, `x [B, T, D] -> [B, T, D]`.

    `q_proj: D -> H Dh`, `k_proj, v_proj: D -> KVH Dh` (grouped-query attention when
    KVH < H), rotary embeddings on q and k, `o_proj: H Dh -> D`; scale `Dh^-0.5`, no biases
    unless `qkv_bias`. `implementation`: "cudnn" (flash attention), "xla", or None: cuDNN on a GPU
    for bf16/fp16 compute, XLA otherwise ("pallas" and "naive" mean None and "xla", so one
    model-wide setting works for every mixer).

    Packed documents: `__call__(x, segment_ids=ids)` (`ids [B, T]` integers,
    `jaxla.layers.segments`) attends only within each document (a `[B, 1, T, T]` boolean mask
    beside the causal one, on either backend: `jax.nn.dot_product_attention` hands it to cuDNN
    as an additive bias) and restarts the rotary positions at every document start (RoPE is
    relative, so the scores are the same either way; restarting keeps the angles, and so the
    rounding, those of the document run alone). The mask makes the cost the full masked T^2
    whatever the document lengths.

    Decoding: `init_cache(batch_size, max_len)` -> `KVCache` of `max_len` positions;
    `__call__(x, cache=c)` writes the T new keys/values at `c.length`, attends over the valid
    positions (XLA, masked) and returns `(y, new_cache)`. Writing past max_len is not checked
    under jit (dynamic_update_slice clamps): size the cache for the whole generation.
    """

    def __init__(self, hidden_size: int = 1024, *, num_heads: int = 16,
                 num_kv_heads: int | None = None, head_dim: int | None = None,
                 rope_theta: float = 10000.0, qkv_bias: bool = False,
                 implementation: str | None = None, initializer_range: float = 0.02,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        name = "Attention"
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"{name}: implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
                             f"got {implementation!r}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_divides(name, "num_kv_heads", num_kv_heads, "num_heads", num_heads)
        if head_dim is None:
            check_divides(name, "num_heads", num_heads, "hidden_size", hidden_size)
            head_dim = hidden_size // num_heads
        if head_dim % 2:
            raise ValueError(f"{name}: rotary embeddings need an even head_dim, got {head_dim=}")
        if implementation == "cudnn" and (head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8):
            raise ValueError(f"{name}: cuDNN flash attention needs head_dim <= "
                             f"{CUDNN_MAX_HEAD_DIM} and a multiple of 8, got {head_dim=}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_theta = rope_theta
        self.implementation = implementation
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, stddev=initializer_range)
        self.q_proj = linear(hidden_size, num_heads * head_dim, use_bias=qkv_bias, **kw)
        self.k_proj = linear(hidden_size, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
        self.v_proj = linear(hidden_size, num_kv_heads * head_dim, use_bias=qkv_bias, **kw)
        self.o_proj = linear(num_heads * head_dim, hidden_size, **kw)

    def _backend(self, dtype) -> str:
        if self.implementation == "cudnn":
            return "cudnn"
        if self.implementation in ("xla", "naive"):
            return "xla"
        cudnn_ok = (_on_gpu() and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                    and self.head_dim <= CUDNN_MAX_HEAD_DIM and self.head_dim % 8 == 0)
        return "cudnn" if cudnn_ok else "xla"

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """Zero keys/values `[batch_size, max_len, KVH, Dh]` in the compute dtype, length 0."""
        shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
        dtype = self.dtype or jnp.float32
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array, cache: KVCache | None = None, *, segment_ids=None,
                 norm=None):
        B, T, D = x.shape
        if D != self.hidden_size:
            raise ValueError(f"Attention({self.hidden_size}) got {x.shape=}")
        segments.check("Attention", segment_ids, B, T, cache)
        cd = compute_dtype(self.dtype, x, norm)
        H, KVH, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = input_projections(x, norm, self.q_proj, self.k_proj, self.v_proj)
        q = q.astype(cd).reshape(B, T, H, Dh)
        k = k.astype(cd).reshape(B, T, KVH, Dh)
        v = v.astype(cd).reshape(B, T, KVH, Dh)
        start = jnp.zeros((), jnp.int32) if cache is None else cache.length
        positions = start + jnp.arange(T, dtype=jnp.int32)
        if segment_ids is None:
            rope_positions, mask = positions, None
        else:
            rope_positions = segments.document_positions(segment_ids)
            mask = segments.same_document(segment_ids)[:, None]  # [B, 1, T, T]
        q = apply_rope(q, rope_positions, self.rope_theta)
        k = apply_rope(k, rope_positions, self.rope_theta)
        if cache is None:
            o = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                             implementation=self._backend(cd))
            return self.o_proj(o.reshape(B, T, H * Dh))
        zero = jnp.zeros((), jnp.int32)
        at = (zero, start, zero, zero)
        k_all = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), at)
        v_all = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), at)
        S = k_all.shape[1]
        mask = jnp.arange(S, dtype=jnp.int32)[None, :] <= positions[:, None]  # [T, S]
        o = jax.nn.dot_product_attention(q, k_all.astype(cd), v_all.astype(cd),
                                         mask=mask[None, None], implementation="xla")
        y = self.o_proj(o.reshape(B, T, H * Dh))
        return y, KVCache(k_all, v_all, start + T)
