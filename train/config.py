"""`TrainConfig`: every option of `python -m train`, its command line and its JSON form.

A run is described by a model preset (`--preset`, any `LMConfig.preset` name or "default", the
embedded byte-level GLA model) plus overrides of any `LMConfig` field (`--model.hidden_size 512`
or the short form `--hidden_size 512`) and of any training option (`--steps 300`). The resolved
config is written to `<run_dir>/config.json`; `--resume` reads it back and applies only the
options given on the command line on top of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from jaxla.models import LMConfig

# The embedded default: a byte-level GLA model (0.5M parameters; heads of K=32, V=64; SwiGLU 256)
# small enough to train 250 steps of 16 x 256 bytes in a few minutes on a 2-core CPU.
DEFAULT_MODEL = LMConfig(vocab_size=256, hidden_size=128, num_layers=4, num_heads=2,
                         layer_pattern=("gla",), hidden_ratio=2)

DATA_KINDS = ("stdlib", "text", "tokens", "mqar", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # Run.
    name: str | None = None
    run_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 0

    # Model.
    preset: str = "default"
    model: LMConfig = DEFAULT_MODEL

    # Data.
    data: str = "stdlib"
    data_path: str | None = None
    token_dtype: str | None = None
    eos_id: int | None = None
    val_fraction: float = 0.05
    mqar_num_kv_pairs: int = 8
    mqar_vocab_size: int | None = None
    mqar_power_a: float = 0.01

    # Batch and schedule.
    batch_size: int = 16
    seq_len: int = 256
    steps: int = 250
    lr: float = 3e-3
    warmup_steps: int = 25
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0

    # Evaluation, logging, checkpoints.
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    timing_warmup: int = 5
    save_every: int = 100
    keep: int = 2
    checkpoint: bool = True
    progress: str = "auto"
    plot: bool = True

    # Devices.
    num_devices: int | None = None
    mesh_data: int = -1
    mesh_fsdp: int = 1

    # Testing hooks.
    stop_after: int | None = None
    nan_at_step: int | None = None

    def __post_init__(self):
        if isinstance(self.model, dict):  # read back from JSON
            object.__setattr__(self, "model", LMConfig(**self.model))
        if self.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {self.data!r}")
        if self.data in ("text", "tokens") and not self.data_path:
            raise ValueError(f"--data {self.data} needs --data_path")
        positive = ("batch_size", "seq_len", "steps", "log_every", "eval_every", "eval_batches",
                    "keep", "mqar_num_kv_pairs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "timing_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress must be auto, bar, lines or off, got {self.progress!r}")
        if self.token_dtype not in (None, "uint16", "uint32", "int32"):
            raise ValueError(f"token_dtype must be uint16, uint32 or int32, "
                             f"got {self.token_dtype!r}")
        if self.eos_id is not None and (self.data != "tokens" or self.eos_id < 0):
            raise ValueError(f"eos_id must be an id >= 0 and applies to --data tokens only (the "
                             f"byte corpora end each file with byte 0), got eos_id={self.eos_id} "
                             f"with data={self.data!r}")
        if self.mesh_fsdp < 1 or (self.mesh_data < 1 and self.mesh_data != -1):
            raise ValueError(f"mesh sizes must be >= 1 (mesh_data may be -1: all remaining "
                             f"devices), got {self.mesh_data=}, {self.mesh_fsdp=}")

    @property
    def run_name(self) -> str:
        return self.name or f"{self.preset}-{self.data}"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.run_name

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["model"] = dataclasses.asdict(self.model)
        out["model"]["layer_pattern"] = list(self.model.layer_pattern)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**d)


# Help text of every option; `--help` prints these.
TRAIN_HELP = {
    "name": "run name (default: <preset>-<data>)",
    "run_dir": "run folder: checkpoints/, config.json, metrics.jsonl, curves.png "
               "(default: runs/<name>)",
    "resume": "continue the run in run_dir from its latest checkpoint, exactly (same data order, "
              "optimizer state and RNG); config.json is the base, options given here override it",
    "overwrite": "delete an existing run_dir's checkpoints and logs and start afresh",
    "seed": "seed of the parameter init, the data order and the PRNG key in the train state",
    "preset": "model preset: 'default' (a byte-level GLA: hidden 128, 4 layers, 2 heads) or any "
              "LMConfig.preset name (gla_340m, mamba_370m, transformer_340m, lightning_340m, "
              "minimax_hybrid_340m, tiny, tiny_<mixer>)",
    "data": "stdlib: bytes of the Python standard library's *.py files (no download); text: "
            "bytes of a text file or a folder of them (--data_path); tokens: a token array, "
            ".npy or raw .bin (--data_path, --token_dtype); mqar: multi-query associative recall "
            "(synthetic); random: uniform random tokens (for throughput). Where there are "
            "documents (stdlib and text folders: one per file, ending with byte 0; tokens: "
            "--eos_id) rows are packed: the model sees each document alone and no target "
            "crosses into the next document",
    "data_path": "file or folder for --data text / tokens",
    "token_dtype": "element type of a raw .bin token file: uint16, uint32 or int32 (default: "
                   "the dtype in the sidecar <data_path>.json, else uint16)",
    "eos_id": "tokens: the separator id that ends every document of the token file (default: "
              "the eos_id in the sidecar <data_path>.json; none: no document boundaries)",
    "val_fraction": "share held out for validation: files (by a hash of their path) of stdlib and "
                    "text folders, the tail of a single text file or token array",
    "mqar_num_kv_pairs": "MQAR: key-value pairs per sequence (each queried once)",
    "mqar_vocab_size": "MQAR: tokens used (default: the model's vocab_size); keys come from the "
                       "lower half, values from the upper half, token 0 is the filler",
    "mqar_power_a": "MQAR: exponent a of the power law p(gap) ~ gap^(a-1) placing the queries "
                    "(Zoology's default 0.01 puts them close to the context)",
    "batch_size": "sequences per step (global, over all devices)",
    "seq_len": "tokens per sequence",
    "steps": "optimizer steps in total (a resumed run continues up to this number)",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "linear warm-up from 0 to lr over this many steps, then cosine decay",
    "min_lr_ratio": "the cosine decay ends at lr * min_lr_ratio at the last step",
    "weight_decay": "AdamW decoupled weight decay, applied to matrices (embedding and linear "
                    "kernels), not to norm scales, biases, Mamba's A_log and D",
    "beta1": "AdamW beta1",
    "beta2": "AdamW beta2",
    "eps": "AdamW epsilon",
    "clip_norm": "clip gradients to this global norm (0: no clipping)",
    "log_every": "steps between log records (metrics.jsonl, progress lines)",
    "eval_every": "steps between validation passes (also run at the last step)",
    "eval_batches": "batches of the fixed validation set",
    "timing_warmup": "first steps left out of the tokens/s, TFLOP/s and MFU figures",
    "save_every": "steps between checkpoints (0: only at the end); always one at the end",
    "keep": "checkpoints kept (the newest)",
    "checkpoint": "write checkpoints at all (--no-checkpoint for throughput runs)",
    "progress": "auto: a tqdm bar on a terminal, log lines otherwise; bar; lines; off",
    "plot": "write curves.png at the end",
    "num_devices": "use only the first N devices (default: all)",
    "mesh_data": "size of the 'data' mesh axis (-1: devices / mesh_fsdp)",
    "mesh_fsdp": "size of the 'fsdp' mesh axis: parameters and optimizer state are sharded over "
                 "it, the batch over data x fsdp",
    "stop_after": "testing: stop after this step as if killed (no final checkpoint)",
    "nan_at_step": "testing: make this step's loss NaN to exercise the NaN guard",
}

MODEL_HELP = {
    "vocab_size": "vocabulary size (256 for bytes)",
    "hidden_size": "model width D",
    "num_layers": "number of blocks",
    "layer_pattern": "mixers of the blocks, comma separated, repeated over the depth "
                     "(gla, lightning, mamba, attention)",
    "num_heads": "heads of gla / lightning / attention mixers",
    "num_kv_heads": "KV heads of attention mixers (grouped-query; none: num_heads)",
    "head_dim": "head dim of lightning / attention mixers (none: hidden_size / num_heads)",
    "mlp": "a SwiGLU MLP after each mixer",
    "hidden_ratio": "MLP width rule: 256 * ceil(D * hidden_ratio * 2/3 / 256)",
    "intermediate_size": "MLP width (none: from hidden_ratio)",
    "expand_k": "GLA key width = D * expand_k",
    "expand_v": "GLA value width = D * expand_v",
    "gate_low_rank_dim": "GLA forget gate rank",
    "gate_logit_normalizer": "GLA forget gate: logsigmoid(.) / normalizer",
    "use_output_gate": "GLA output gate",
    "use_short_conv": "GLA short convolutions on q, k, v",
    "conv_size": "GLA short convolution width",
    "lightning_decay": "lightning decay convention: minimax or fla",
    "d_state": "Mamba state size N",
    "d_conv": "Mamba convolution width",
    "expand": "Mamba d_inner = expand * D",
    "dt_rank": "Mamba dt rank (none: ceil(D / 16))",
    "rope_theta": "RoPE base of attention mixers",
    "norm_eps": "RMSNorm epsilon",
    "tie_embeddings": "LM head = embedding transpose",
    "initializer_range": "std of the normal init of embeddings and linear layers",
    "dtype": "compute dtype: float32, bfloat16 (default: bfloat16 on GPU/TPU, float32 on CPU, "
             "where XLA's bf16 dots are slow); parameters stay in param_dtype",
    "param_dtype": "parameter dtype (float32)",
    "implementation": "op implementation: pallas, xla, naive (none: pallas on GPU, xla elsewhere)",
    "remat": "recompute each block in the backward pass (less activation memory)",
    "scan_layers": "run the blocks as one lax.scan over repetitions of layer_pattern (compiles "
                   "one repetition instead of every layer)",
}


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _converter(tp):
    """A str -> value converter for a dataclass field type (int, float, str, X | None, tuples)."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = _converter(next(a for a in args if a is not type(None)))
        return lambda s: None if s.lower() in ("none", "null", "") else inner(s)
    if origin is tuple:
        return lambda s: tuple(p.strip() for p in s.split(",") if p.strip())
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    raise TypeError(f"no command-line converter for {tp}")


CHOICES = {
    "data": DATA_KINDS,
    "progress": ("auto", "bar", "lines", "off"),
    "token_dtype": ("uint16", "uint32", "int32"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.lightning_decay": ("minimax", "fla"),
}


def _metavar(tp) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and typing.get_origin(tp) is not tuple:
        return _metavar(args[0]) + "|none"
    if typing.get_origin(tp) is tuple:
        return "A,B,..."
    return {int: "INT", float: "FLOAT", str: "STR"}.get(tp, "VALUE")


def _add_field(group, flags, tp, dest, help_text):
    if tp is bool:
        group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        return
    group.add_argument(*flags, dest=dest, type=_converter(tp), default=argparse.SUPPRESS,
                       choices=CHOICES.get(dest), metavar=_metavar(tp), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        usage="python -m train [--preset NAME] [--OPTION VALUE ...] [--model.FIELD VALUE ...]",
        description="Train a jaxla language model. With no arguments: the embedded default, a "
                    "byte-level GLA model on the Python standard library's source files.",
        epilog="Examples:\n"
               "  python -m train\n"
               "  python -m train --steps 2000 --hidden_size 384\n"
               "  python -m train --preset gla_340m --batch_size 8 --seq_len 2048 --steps 300 "
               "--data random --no-checkpoint\n"
               "  python -m train --data mqar --preset tiny_gla --vocab_size 32 --seq_len 32 "
               "--batch_size 64 --hidden_size 128 --num_heads 1 --use_short_conv --no-mlp "
               "--initializer_range 0.05 --lr 1e-2 --min_lr_ratio 1 --weight_decay 0 "
               "--steps 200\n"
               "  python -m train --resume --run_dir runs/default-stdlib --steps 1200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_types = _field_types(TrainConfig)
    group = parser.add_argument_group("training options")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        default = getattr(defaults, f.name)
        text = TRAIN_HELP[f.name]
        if "default:" not in text:
            text += f" (default: {default})"
        _add_field(group, [f"--{f.name}"], train_types[f.name], f.name, text)
    model_types = _field_types(LMConfig)
    group = parser.add_argument_group(
        "model options (defaults from the preset's LMConfig; spell them --model.NAME or --NAME)")
    for f in dataclasses.fields(LMConfig):
        tp = model_types[f.name]
        _add_field(group, [f"--model.{f.name}", f"--{f.name}"], tp, f"model.{f.name}",
                   MODEL_HELP.get(f.name, f.name))
    return parser


def model_for_preset(preset: str) -> LMConfig:
    if preset == "default":
        return DEFAULT_MODEL
    return LMConfig.preset(preset)


def parse_args(argv: list[str] | None = None, *, backend: str | None = None) -> TrainConfig:
    """The resolved config of a command line (`backend` picks the default compute dtype).

    With `--resume` and an existing `<run_dir>/config.json`, that file is the base and only the
    options given on the command line change it.
    """
    ns = vars(build_parser().parse_args(argv))
    model_over = {k[len("model."):]: v for k, v in ns.items() if k.startswith("model.")}
    train_over = {k: v for k, v in ns.items() if not k.startswith("model.")}

    base = None
    if train_over.get("resume"):
        probe = TrainConfig(**{k: v for k, v in train_over.items()
                               if k in ("name", "run_dir", "preset", "data", "data_path")})
        saved = probe.run_path / "config.json"
        if saved.exists():
            base = TrainConfig.from_dict(json.loads(saved.read_text()))
    if base is not None:
        if "preset" in train_over and train_over["preset"] != base.preset:
            raise SystemExit(f"--preset {train_over['preset']} differs from the saved run's "
                             f"preset {base.preset!r}; drop --preset or start a new run")
        # Testing hooks and resume/overwrite are not inherited from the interrupted run.
        base = base.replace(stop_after=None, nan_at_step=None, overwrite=False)
        model = base.model
    else:
        base = TrainConfig()
        model = model_for_preset(train_over.get("preset", base.preset))
        if "dtype" not in model_over:
            import jax

            backend = backend or jax.default_backend()
            model_over["dtype"] = "float32" if backend == "cpu" else "bfloat16"
    model = model.replace(**model_over) if model_over else model
    return base.replace(model=model, **train_over)
