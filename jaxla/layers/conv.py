"""Causal depthwise 1-D convolution with a decode state (FLA's ShortConvolution, Mamba's conv1d)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxla.layers import segments
from jaxla.layers._common import compute_dtype, normal_init, recomputed

ACTIVATIONS = (None, "silu")


class ShortConvolution(nnx.Module):
    """`y_t = act(bias + sum_w weight[w] * x_{t - (W-1) + w})` per channel, zero before t = 0.

    Input `[B, T, C]`, output `[B, T, C]` in the compute dtype. The decode state is the last
    `W - 1` inputs, `[B, W - 1, C]` in the compute dtype: `__call__(x, cache=state)` prepends it
    instead of zeros and returns `(y, new_state)`, for any T (prefill or one token).
    Weight `[W, C]` (PyTorch's Conv1d stores `[C, 1, W]`; same numbers).

    `segment_ids [B, T]` (packed documents, `jaxla.layers.segments`): taps reaching before the
    start of the position's document read zeros, exactly as taps before t = 0 do.
    """

    def __init__(self, channels: int, kernel_size: int = 4, *, use_bias: bool = False,
                 activation: str | None = "silu", rngs: nnx.Rngs, dtype=None,
                 param_dtype=jnp.float32, kernel_init=None, bias_init=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size=}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.dtype = dtype
        kernel_init = kernel_init or normal_init(0.02)
        self.weight = nnx.Param(kernel_init(rngs.params(), (kernel_size, channels), param_dtype))
        if use_bias:
            bias_init = bias_init or nnx.initializers.zeros_init()
            self.bias = nnx.Param(bias_init(rngs.params(), (channels,), param_dtype))
        else:
            self.bias = None

    def init_cache(self, batch_size: int, dtype=None) -> jax.Array:
        """Zeros `[batch_size, W - 1, C]` (dtype: the compute dtype, float32 by default)."""
        dtype = dtype or self.dtype or jnp.float32
        return jnp.zeros((batch_size, self.kernel_size - 1, self.channels), dtype)

    def __call__(self, x: jax.Array, cache: jax.Array | None = None, *, segment_ids=None):
        B, T, C = x.shape
        if C != self.channels:
            raise ValueError(f"ShortConvolution({self.channels}) got {x.shape=}")
        segments.check("ShortConvolution", segment_ids, B, T, cache)
        cd = compute_dtype(self.dtype, x)
        x = x.astype(cd)
        W = self.kernel_size
        if cache is None:
            past = jnp.zeros((B, W - 1, C), cd)
        else:
            if cache.shape != (B, W - 1, C):
                raise ValueError(f"conv cache must be [B, W-1, C] = {(B, W - 1, C)}, "
                                 f"got {cache.shape=}")
            past = cache.astype(cd)
        ext = jnp.concatenate([past, x], axis=1)  # [B, W-1+T, C]
        bias = None if self.bias is None else self.bias[...]
        positions = None if segment_ids is None else segments.document_positions(segment_ids)
        y = recomputed(lambda ext, w, b, pos: self._taps(ext, w, b, pos).astype(cd))(
            ext, self.weight[...], bias, positions)
        if cache is None:
            return y
        return y, ext[:, ext.shape[1] - (W - 1):].astype(cache.dtype)

    def _taps(self, ext: jax.Array, weight: jax.Array, bias: jax.Array | None,
              positions: jax.Array | None):
        """The W taps, bias and activation over `ext [B, W-1+T, C]` -> float32 `[B, T, C]`.

        `positions [B, T]`: index of each position within its document; tap i looks back
        `W - 1 - i` steps and counts only where that stays inside the document.
        """
        W = self.kernel_size
        T = ext.shape[1] - (W - 1)
        w = weight.astype(jnp.float32)

        def tap(i):
            x = ext[:, i:i + T].astype(jnp.float32)
            if positions is not None and i < W - 1:
                x = jnp.where((positions >= W - 1 - i)[..., None], x, 0.0)
            return x * w[i]

        y = sum(tap(i) for i in range(W))
        if bias is not None:
            y = y + bias.astype(jnp.float32)
        if self.activation == "silu":
            y = jax.nn.silu(y)
        return y
