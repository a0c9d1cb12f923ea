"""FLOP accounting: hand-derived formulas held against XLA's cost analysis.

* `xla`: XLA's cost analysis read defensively, loops and cumulative ops corrected.
"""

from jaxla.flops.xla import count, count_all, xla_flops

__all__ = ["count", "count_all", "xla_flops"]
