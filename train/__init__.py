"""`python -m train`: the jaxla training program.

* `config`: `TrainConfig`, presets plus command-line overrides, JSON form.
* `data`: byte corpora (the Python standard library by default), token arrays, MQAR, random.
* `step`: AdamW + warm-up/cosine + clipping, the functional train and eval steps.
* `sharding`: the ("data", "fsdp") mesh, batch and FSDP parameter shardings, each process's rows.
* `distributed`: several processes (hosts): `--distributed`, `jax.distributed` start-up, roles.
* `checkpoint`: Orbax checkpoints with exact resume, sealed by checksums.
* `guard`: the divergence guard (NaN/Inf, loss spikes) and `TrainingDiverged`.
* `metrics`: tokens/s, TFLOP/s, MFU, the JSONL log, the progress bar, the plot.
* `loop`: `train(config)` and `main(argv)`.
"""

from train.config import TrainConfig, parse_args
from train.guard import TrainingDiverged
from train.loop import main, train

__all__ = ["TrainConfig", "TrainingDiverged", "main", "parse_args", "train"]
