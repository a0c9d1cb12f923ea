"""Mamba selective scan as Pallas GPU kernels (forward and backward) with a custom VJP."""

from pallas_kernels.selective_scan.api import selective_scan
from pallas_kernels.selective_scan.config import MAX_N, BlockSizes, unsupported

__all__ = ["MAX_N", "BlockSizes", "selective_scan", "unsupported"]
