"""Gated Linear Attention as Pallas GPU kernels (Triton lowering) with custom VJPs."""

from pallas_kernels.gla.api import chunk_gla, fused_recurrent_gla
from pallas_kernels.gla.config import (
    DEFAULT_SPAN_LIMIT,
    MAX_CHUNK,
    MAX_HEAD_DIM,
    BlockSizes,
    unsupported,
)

__all__ = ["BlockSizes", "DEFAULT_SPAN_LIMIT", "MAX_CHUNK", "MAX_HEAD_DIM", "chunk_gla",
           "fused_recurrent_gla", "unsupported"]
