"""Simple GLA / Lightning Attention Pallas kernels (scalar log-decay per head) with custom VJPs."""

from pallas_kernels.simple_gla.api import simple_gla, simple_gla_recurrent
from pallas_kernels.simple_gla.config import (
    MAX_CHUNK,
    MAX_HEAD_DIM,
    BlockSizes,
    check_head_dims,
    unsupported,
)

__all__ = ["MAX_CHUNK", "MAX_HEAD_DIM", "BlockSizes", "check_head_dims", "simple_gla",
           "simple_gla_recurrent", "unsupported"]
