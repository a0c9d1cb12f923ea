"""FLOP accounting: hand-derived formulas, peak FLOP/s, and XLA's cost analysis read safely.

* `formulas`: ops, layers, whole models, training steps (`Flops(dot, other, transcendentals)`);
  `XLA_PATH` are the conventions under which they equal XLA's count of jaxla's layers and
  `CausalLM` with implementation="xla" (tests/flops/test_layers.py, test_models.py).
* `generation`: generating T tokens by naive re-encoding, KV cache or recurrent state.
* `kernels`: FLOPs and HBM bytes of each Pallas kernel (the kernels' `pl.CostEstimate`s are held
  against them: tests/flops/test_kernel_costs.py).
* `hardware`: peak FLOP/s per device.
* `xla`: `jax.jit(f).lower(...).cost_analysis()` read defensively (dict, list or None results,
  custom calls counted -1).

The report tooling lives apart, in `jaxla.flops.report` (XLA's count corrected for loops,
cumulative ops and Pallas calls; `python -m jaxla.flops --out docs/flops` writes the report).

For the training program's MFU:
`training_flops_per_token(config, seq_len) * tokens_per_s / (n_devices * peak_flops(kind, dtype))`.
"""

from jaxla.flops.formulas import (
    XLA_PATH,
    Conventions,
    Flops,
    model_breakdown,
    model_forward,
    param_count,
    recomputation,
    six_n,
    training_flops_per_token,
    training_step,
)
from jaxla.flops.generation import generation_curve, generation_flops
from jaxla.flops.hardware import peak_flops
from jaxla.flops.kernels import KernelCost
from jaxla.flops.xla import analyze, read_analysis

__all__ = [
    "XLA_PATH",
    "Conventions",
    "Flops",
    "KernelCost",
    "analyze",
    "generation_curve",
    "generation_flops",
    "model_breakdown",
    "model_forward",
    "param_count",
    "peak_flops",
    "read_analysis",
    "recomputation",
    "six_n",
    "training_flops_per_token",
    "training_step",
]
