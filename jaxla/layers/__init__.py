"""Flax NNX layers over `jaxla.ops`: GLA, Lightning Attention, Mamba, softmax attention, MLP, norm.

Every mixer maps `x [B, T, D] -> [B, T, D]`, takes keyword-only `rngs`, `dtype` (compute) and
`param_dtype`, and an `implementation` passed to its op (None: Pallas on GPU, XLA elsewhere). For
decoding, `init_cache(batch_size, max_len)` gives the layer's cache and `layer(x, cache=c)`
returns `(y, new_cache)`: a recurrent state (+ conv state) for the linear layers and Mamba, so a
token costs O(1), and a preallocated KV cache for softmax attention. `layer(x, segment_ids=ids)`
computes packed documents, each as if alone (`jaxla.layers.segments`). `layer(x, norm=n)` (and
`SwiGLU`'s, `SparseMoE`'s) is `layer(n(x))` for an `RMSNorm` n whose output the backward pass
recomputes from x instead of saving it (`_common.input_projections`).
"""

from jaxla.layers.attention import Attention, KVCache
from jaxla.layers.conv import ShortConvolution
from jaxla.layers.gla import GatedLinearAttention, GLACache
from jaxla.layers.lightning import LightningAttention, LightningCache
from jaxla.layers.mamba import Mamba, MambaCache
from jaxla.layers.mlp import SwiGLU
from jaxla.layers.moe import SparseMoE
from jaxla.layers.norm import RMSNorm, rms_norm
from jaxla.layers.rope import apply_rope

__all__ = [
    "Attention",
    "GLACache",
    "GatedLinearAttention",
    "KVCache",
    "LightningAttention",
    "LightningCache",
    "Mamba",
    "MambaCache",
    "RMSNorm",
    "ShortConvolution",
    "SparseMoE",
    "SwiGLU",
    "apply_rope",
    "rms_norm",
]
