"""Pure-JAX implementations: the step-by-step specs (`naive_*`) and the chunked XLA paths (`chunk_*`)."""

from jaxla.ops.reference.gla import chunk_gla, naive_gla
from jaxla.ops.reference.selective_scan import chunk_selective_scan, naive_selective_scan
from jaxla.ops.reference.simple_gla import chunk_simple_gla, naive_simple_gla

__all__ = [
    "chunk_gla",
    "chunk_selective_scan",
    "chunk_simple_gla",
    "naive_gla",
    "naive_selective_scan",
    "naive_simple_gla",
]
