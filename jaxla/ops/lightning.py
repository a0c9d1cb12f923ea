"""Lightning Attention: linear attention with a constant per-head decay, run as simple GLA.

Two decay conventions (both natural-log decays per step, `g_gamma[h] <= 0`):

* "fla" (fla-core 0.6.0 `chunk_lightning_attn`, TransNormerLLM Eq. 2):
  `g_gamma[h] = -(8 / H) * (1 - layer_idx / num_layers) * h`, h = 0..H-1; scale `K**-0.5`.
* "minimax" (MiniMax-01's modeling code, ALiBi slopes scaled by depth):
  `rate[h] = 2**(-8 (h + 1) / H) * (1 - layer_idx / (num_layers - 1 + 1e-5) + 1e-5)`,
  `g_gamma[h] = -rate[h]`; no scale (1.0). The 1e-5 in the denominator is MiniMax's own and keeps
  `num_layers = 1` finite.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from jaxla.ops import _checks as checks
from jaxla.ops.simple_gla import simple_gla, simple_gla_recurrent

Decay = Literal["minimax", "fla"]
DECAYS = ("minimax", "fla")


def lightning_decay(num_heads: int, layer_idx: int, num_layers: int, decay: Decay = "minimax"):
    """Per-head log-decay `g_gamma: [num_heads]` float32 for one layer (see the module docstring)."""
    for name, value in (("num_heads", num_heads), ("layer_idx", layer_idx), ("num_layers", num_layers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {name}={value!r}")
    if num_heads < 1 or num_layers < 1:
        raise ValueError(f"num_heads and num_layers must be >= 1, got {num_heads=}, {num_layers=}")
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must be in [0, num_layers), got {layer_idx=}, {num_layers=}")
    h = np.arange(num_heads, dtype=np.float64)
    if decay == "fla":
        g_gamma = -(8.0 / num_heads) * (1.0 - layer_idx / num_layers) * h
    elif decay == "minimax":
        slope = 2.0 ** (-8.0 * (h + 1) / num_heads)
        g_gamma = -slope * (1.0 - layer_idx / (num_layers - 1 + 1e-5) + 1e-5)
    else:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay=!r}")
    return g_gamma.astype(np.float32)


def default_scale(decay: Decay, head_dim: int) -> float:
    """FLA scales q by `K**-0.5`; MiniMax does not scale."""
    return head_dim**-0.5 if decay == "fla" else 1.0


def lightning_attention(
    q,
    k,
    v,
    *,
    layer_idx: int,
    num_layers: int,
    decay: Decay = "minimax",
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    chunk_size: int = 64,
    implementation: checks.Implementation | None = None,
):
    """Chunked Lightning Attention for one layer of a `num_layers` stack.

    Args:
      q, k: `[B, T, H, K]`; v: `[B, T, H, V]`.
      layer_idx, num_layers: the layer's depth, which sets its decay.
      decay: "minimax" (default) or "fla" (see the module docstring).
      scale: defaults to the convention's (1.0 for "minimax", `K**-0.5` for "fla").
      initial_state, output_final_state, segment_ids, cu_seqlens, chunk_size,
        implementation: as in `jaxla.ops.gla`.

    Returns:
      `(o [B, T, H, V] in q.dtype, final_state float32 or None)`, the state `[B, H, K, V]`
      (`[N, H, K, V]` with cu_seqlens).
    """
    g_gamma, scale = _decay_and_scale(q, layer_idx, num_layers, decay, scale)
    return simple_gla(
        q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, segment_ids=segment_ids, cu_seqlens=cu_seqlens,
        chunk_size=chunk_size, implementation=implementation,
    )


def lightning_attention_recurrent(
    q,
    k,
    v,
    *,
    layer_idx: int,
    num_layers: int,
    decay: Decay = "minimax",
    scale=None,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    implementation: checks.Implementation | None = None,
):
    """Lightning Attention in its recurrent form (decoding); arguments as `lightning_attention`."""
    g_gamma, scale = _decay_and_scale(q, layer_idx, num_layers, decay, scale)
    return simple_gla_recurrent(
        q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
        output_final_state=output_final_state, segment_ids=segment_ids, cu_seqlens=cu_seqlens,
        implementation=implementation,
    )


def _decay_and_scale(q, layer_idx, num_layers, decay, scale):
    checks.check_rank("q", q, 4, "[B, T, H, K]")
    g_gamma = lightning_decay(q.shape[2], layer_idx, num_layers, decay)
    return g_gamma, default_scale(decay, q.shape[3]) if scale is None else scale
