"""FLOP accounting: hand-derived formulas held against XLA's cost analysis.

* `formulas`: ops, layers, whole models, training steps (`Flops(dot, other, transcendentals)`);
  `XLA_PATH` are the conventions under which they equal XLA's count of jaxla's layers and
  `CausalLM` with implementation="xla" (tests/flops/test_layers.py, test_models.py).
* `generation`: generating T tokens by naive re-encoding, KV cache or recurrent state.
* `xla`: XLA's cost analysis read defensively, loops and cumulative ops corrected.
* `hardware`: peak FLOP/s per device.
* `python -m jaxla.flops --out docs/flops`: the report (formula vs XLA, generation, plots).

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
from jaxla.flops.xla import count, count_all, xla_flops

__all__ = [
    "XLA_PATH",
    "Conventions",
    "Flops",
    "count",
    "count_all",
    "generation_curve",
    "generation_flops",
    "model_breakdown",
    "model_forward",
    "param_count",
    "peak_flops",
    "recomputation",
    "six_n",
    "training_flops_per_token",
    "training_step",
    "xla_flops",
]
