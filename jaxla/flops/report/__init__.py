"""The FLOP report and its tools: what `python -m jaxla.flops` runs; not needed to use jaxla.

* `walker`: XLA's FLOP count corrected by walking the jaxpr (loops, cumulative ops, Pallas calls
  replaced by their `pl.CostEstimate`): `count_all`, `count`, `xla_flops`.
* `programs`: the JAX programs (plain jnp, the real layers and models, built abstractly) whose
  count the report and the tests hold against `jaxla.flops.formulas`.
* `kernel_costs`: the Pallas kernels' declared estimates beside `jaxla.flops.kernels`.
* `build`: `REPORT.md` and its plots (matplotlib, `pip install jaxla[plots]`, only for the
  plots); `python -m jaxla.flops [--out DIR] [--no-plots]`.
* `device_check`: `python -m jaxla.flops.report.device_check`, one short run on a GPU machine.

Layering: this package imports the library (`jaxla.flops`, `jaxla.ops`, `jaxla.layers`,
`jaxla.models`); nothing in the library imports it.
"""

from jaxla.flops.report.walker import count, count_all, xla_flops

__all__ = ["count", "count_all", "xla_flops"]
