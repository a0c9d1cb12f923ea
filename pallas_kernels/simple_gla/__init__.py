"""Simple GLA / Lightning Attention Pallas kernels (scalar log-decay per head) with custom VJPs."""

from pallas_kernels.simple_gla.api import simple_gla, simple_gla_recurrent
from pallas_kernels.simple_gla.config import MAX_HEAD_DIM, BlockSizes, check_head_dims

__all__ = ["MAX_HEAD_DIM", "BlockSizes", "check_head_dims", "simple_gla", "simple_gla_recurrent"]
