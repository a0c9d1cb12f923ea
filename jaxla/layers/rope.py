"""Rotary position embedding, "rotate half" layout (GPT-NeoX, LLaMA, FLA's RotaryEmbedding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotate `x [B, T, H, Dh]` (Dh even) by the angles of `positions [T]` (or `[B, T]`).

    Channel pairs are `(i, i + Dh/2)` with frequency `theta^(-2i/Dh)`; computed in float32 and
    returned in x's dtype.
    """
    Dh = x.shape[-1]
    if Dh % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {x.shape=}")
    inv_freq = theta ** (-jnp.arange(0, Dh, 2, dtype=jnp.float32) / Dh)  # [Dh/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [(B,) T, Dh/2]
    if angles.ndim == 2:
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., :Dh // 2], xf[..., Dh // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
