"""`TrainConfig`: every option of `python -m train`, its command line and its JSON form.

A run is described by a model preset (`--preset`, any `LMConfig.preset` name or "default", the
embedded byte-level GLA model) plus overrides of any `LMConfig` field (`--model.hidden_size 512`
or the short form `--hidden_size 512`) and of any training option (`--steps 300`). The resolved
config is written to `<run_dir>/config.json`; `--resume` reads it back and applies only the
options given on the command line on top of it.

Every option is checked when a `TrainConfig` is made: its type, its own rule in `FIELD_RULES`
(one per field) and the few rules that tie options together (`_check_combinations`). A bad value
raises `ConfigError`, one line naming the option and the value; `python -m train` prints it
argparse-style and exits with status 2, and so do the command line's own errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path

from jaxla.models import LMConfig

from .distributed import LaunchOptions, add_launch_arguments, launch_options
from .tokenize import TOKEN_DTYPES

PROG = "train"  # the program name in error lines: "train: error: ..."


class ConfigError(ValueError):
    """A bad option value (or combination): `str(error)` is one line naming the option and the
    value, e.g. `--seq_len: must be >= 2, got 1`."""


# The embedded default: a byte-level GLA model (0.5M parameters; heads of K=32, V=64; SwiGLU 256)
# small enough to train 250 steps of 16 x 256 bytes in a few minutes on a 2-core CPU.
DEFAULT_MODEL = LMConfig(vocab_size=256, hidden_size=128, num_layers=4, num_heads=2,
                         layer_pattern=("gla",), hidden_ratio=2)

DATA_KINDS = ("stdlib", "text", "tokens", "mqar", "random")
PROGRESS_MODES = ("auto", "bar", "lines", "off")


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
    tokenizer: str | None = None
    token_dtype: str | None = None
    separator_id: int | None = None
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
    loss_chunk: int = 256

    # Divergence guard (NaN/Inf always stops the run; this also stops it on a loss spike).
    spike_factor: float = 3.0
    spike_window: int = 50

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

    def __post_init__(self):
        if isinstance(self.model, dict):  # read back from JSON
            try:
                object.__setattr__(self, "model", LMConfig(**self.model))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"model: {exc}") from None
        types_ = _field_types(TrainConfig)
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), types_[f.name])
        _check_combinations(self)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.preset}-{self.data}"

    @property
    def run_path(self) -> Path:
        return run_path(self.name, self.run_dir, self.preset, self.data)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["model"] = dataclasses.asdict(self.model)
        for name, value in out["model"].items():  # as JSON reads them back
            if isinstance(value, tuple):
                out["model"][name] = list(value)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown option{'s' * (len(unknown) > 1)} "
                              f"{', '.join(map(repr, unknown))}")
        return cls(**d)


def run_path(name: str | None, run_dir: str | None, preset: str, data: str) -> Path:
    """The run folder: `run_dir`, else `runs/<name>`, else `runs/<preset>-<data>`."""
    if run_dir:
        return Path(run_dir)
    return Path("runs") / (name or f"{preset}-{data}")


# --------------------------------------------------------------------------------------------
# Checks: one rule per field, then the rules that tie fields together.


@dataclasses.dataclass(frozen=True)
class Rule:
    """The allowed values of one option: `ok(value)`, and `text`, the rule in words."""

    ok: Callable[[typing.Any], bool]
    text: str


def at_least(low) -> Rule:
    return Rule(lambda v: v >= low, f"must be >= {low}")


def above(low) -> Rule:
    return Rule(lambda v: v > low, f"must be > {low}")


def within(low, high, ends: str = "[]") -> Rule:
    """`low <= v <= high`, with `ends` "[]", "[)" or "()" saying which ends are open."""
    lo_ok = (lambda v: v > low) if ends[0] == "(" else (lambda v: v >= low)
    hi_ok = (lambda v: v < high) if ends[1] == ")" else (lambda v: v <= high)
    return Rule(lambda v: lo_ok(v) and hi_ok(v), f"must be in {ends[0]}{low}, {high}{ends[1]}")


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def is_preset(name: str) -> bool:
    if name == "default":
        return True
    try:
        LMConfig.preset(name)
    except ValueError:
        return False
    return True


NOT_EMPTY = Rule(lambda v: v.strip() != "", "must not be empty")

# The rule of each option (None passes where the type allows it); floats must also be finite.
FIELD_RULES: dict[str, Rule] = {
    "name": NOT_EMPTY,
    "run_dir": NOT_EMPTY,
    "seed": at_least(0),
    "preset": Rule(is_preset, "must be 'default' or an LMConfig preset: gla_340m, mamba_370m, "
                              "transformer_340m, lightning_340m, minimax_hybrid_340m, tiny, "
                              "tiny_<gla|lightning|mamba|attention|hybrid>"),
    "data": one_of(DATA_KINDS),
    "data_path": NOT_EMPTY,
    "token_dtype": one_of(TOKEN_DTYPES),
    "separator_id": at_least(0),
    "val_fraction": within(0, 1, "()"),
    "mqar_num_kv_pairs": at_least(1),
    "mqar_vocab_size": at_least(4),
    "batch_size": at_least(1),
    "seq_len": at_least(2),
    "steps": at_least(1),
    "lr": above(0),
    "warmup_steps": at_least(0),
    "min_lr_ratio": within(0, 1),
    "weight_decay": at_least(0),
    "beta1": within(0, 1, "[)"),
    "beta2": within(0, 1, "[)"),
    "eps": above(0),
    "clip_norm": at_least(0),
    "loss_chunk": at_least(0),
    "spike_factor": Rule(lambda v: v == 0 or v > 1, "must be 0 (off) or > 1"),
    "spike_window": at_least(1),
    "log_every": at_least(1),
    "eval_every": at_least(1),
    "eval_batches": at_least(1),
    "timing_warmup": at_least(0),
    "save_every": at_least(0),
    "keep": at_least(1),
    "progress": one_of(PROGRESS_MODES),
    "num_devices": at_least(1),
    "mesh_data": Rule(lambda v: v == -1 or v >= 1, "must be -1 (the devices left) or >= 1"),
    "mesh_fsdp": at_least(1),
}


def _type_ok(value, tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    names = {type(None): "none", bool: "true or false", int: "an integer", float: "a number",
             str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check_field(name: str, value, tp):
    if not _type_ok(value, tp):
        raise ConfigError(f"--{name}: must be {_type_name(tp)}, got {value!r}")
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{name}: must be a finite number, got {value}")
    rule = FIELD_RULES.get(name)
    if rule is not None and not rule.ok(value):
        raise ConfigError(f"--{name}: {rule.text}, got {value!r}")


def _check_combinations(c: TrainConfig):
    if c.data in ("text", "tokens") and c.data_path is None:
        raise ConfigError(f"--data_path: --data {c.data} needs a file or folder, got none")
    if c.data not in ("text", "tokens") and c.data_path is not None:
        raise ConfigError(f"--data_path: only --data text and tokens read a path, got "
                          f"--data {c.data} with --data_path {c.data_path!r}")
    if c.separator_id is not None and c.data != "tokens":
        raise ConfigError(f"--separator_id: only --data tokens takes it (stdlib and text "
                          f"separate documents with byte 0 or the tokenizer's EOS), got --data "
                          f"{c.data}")
    if c.resume and c.overwrite:
        raise ConfigError("--overwrite: cannot be combined with --resume (one continues the run, "
                          "the other deletes it)")
    if c.data == "mqar":
        vocab = c.mqar_vocab_size or c.model.vocab_size
        if c.mqar_vocab_size is not None and c.mqar_vocab_size > c.model.vocab_size:
            raise ConfigError(f"--mqar_vocab_size: must be <= the model's vocab_size "
                              f"{c.model.vocab_size}, got {c.mqar_vocab_size}")
        n = c.mqar_num_kv_pairs
        if 4 * n > c.seq_len + 1 or n > vocab // 2 - 1:
            raise ConfigError(f"--mqar_num_kv_pairs: {n} key-value pairs need seq_len + 1 >= "
                              f"{4 * n} and an MQAR vocabulary of >= {2 * n + 2} tokens, got "
                              f"seq_len {c.seq_len} and {vocab} tokens")


def model_differences(saved: dict, requested: dict) -> list[str]:
    """`["hidden_size: 128 -> 256", ...]`: the `LMConfig` fields (as dicts) that differ."""
    return [f"{k}: {saved.get(k)!r} -> {requested.get(k)!r}"
            for k in sorted(set(saved) | set(requested)) if saved.get(k) != requested.get(k)]


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
            "bytes of a UTF-8 text file or a folder of them (--data_path); tokens: a token array, "
            ".npy or raw .bin (--data_path, --token_dtype); mqar: multi-query associative recall "
            "(synthetic); random: uniform random tokens (for throughput). Rows of documents "
            "are packed (stdlib and text: one document per file, each followed by byte 0 or "
            "the tokenizer's EOS; tokens: by --separator_id): the model sees each document "
            "alone, the separator opening the next",
    "data_path": "file or folder for --data text / tokens",
    "tokenizer": "a tokenizers tokenizer.json for --data text / stdlib: each file is a document, "
                 "its tokens followed by the tokenizer's EOS (default: UTF-8 bytes); its "
                 "vocabulary must fit the model's vocab_size; copied into the run folder",
    "token_dtype": "element type of a raw .bin token file: uint16, uint32 or int32 (default: "
                   "the dtype of the <file>.json beside it, as python -m train.tokenize writes, "
                   "else uint16)",
    "separator_id": "tokens: the id that follows every document of the token file (default: "
                    "the separator_id of its <file>.json; without one: no document boundaries)",
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
    "loss_chunk": "form the LM head's logits and the cross-entropy this many positions per row "
                  "at a time, with their gradients in the same pass: at most [batch, loss_chunk, "
                  "vocab] logits live instead of [batch, seq_len, vocab] (0: all at once)",
    "spike_factor": "stop, before saving, at a loss above this many times the median loss of the "
                    "previous --spike_window steps (and over 1 nat above it); 0: off. A NaN or "
                    "Inf loss or gradient norm always stops the run",
    "spike_window": "steps in the spike guard's running median",
    "log_every": "steps between log records (metrics.jsonl, progress lines)",
    "eval_every": "steps between validation passes (also run at the last step)",
    "eval_batches": "batches of the fixed validation set",
    "timing_warmup": "first steps left out of the tokens/s, TFLOP/s and MFU figures",
    "save_every": "steps between checkpoints (0: only at the end); always one at the end",
    "keep": "checkpoints kept (the newest)",
    "checkpoint": "write checkpoints at all (--no-checkpoint for throughput runs)",
    "progress": "auto: a tqdm bar on a terminal, log lines otherwise; bar; lines; off",
    "plot": "write curves.png at the end (needs matplotlib: pip install jaxla[plots])",
    "num_devices": "use only the first N devices (default: all)",
    "mesh_data": "size of the 'data' mesh axis (-1: devices / mesh_fsdp)",
    "mesh_fsdp": "size of the 'fsdp' mesh axis: parameters and optimizer state are sharded over "
                 "it, the batch over data x fsdp",
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
    "num_experts": "0: one SwiGLU MLP; E: a top-k routed mixture of E SwiGLU experts",
    "num_experts_per_tok": "experts each token is routed to (top-k)",
    "block_style": "prenorm (x + f(norm(x))) or minimax (the residual starts from norm(x))",
    "attention_residual": "alpha,beta of alpha * residual + beta * attention(...)",
    "linear_residual": "alpha,beta of alpha * residual + beta * mixer(...) for linear mixers",
    "mlp_residual": "alpha,beta of alpha * residual + beta * mlp(...)",
    "expand_k": "GLA key width = D * expand_k",
    "expand_v": "GLA value width = D * expand_v",
    "gate_low_rank_dim": "GLA forget gate rank",
    "gate_logit_normalizer": "GLA forget gate: logsigmoid(.) / normalizer",
    "use_output_gate": "GLA output gate",
    "use_short_conv": "GLA short convolutions on q, k, v",
    "conv_size": "GLA short convolution width",
    "feature_map": "GLA feature map on q and k: relu, sigmoid, logsigmoid, silu, swish, sqrelu, "
                   "gelu (none: identity)",
    "clamp_min": "GLA: floor of the log forget gate (none: no floor)",
    "gla_kv_heads": "GLA: heads of k, v and the forget gate, each serving num_heads / "
                    "gla_kv_heads query heads (FLA's num_kv_heads; none: num_heads)",
    "lightning_decay": "lightning decay convention: minimax or fla",
    "lightning_norm_eps": "epsilon of the lightning output norm (none: norm_eps)",
    "d_state": "Mamba state size N",
    "d_conv": "Mamba convolution width",
    "expand": "Mamba d_inner = expand * D",
    "dt_rank": "Mamba dt rank (none: ceil(D / 16))",
    "mamba_init": "Mamba linear init: normal (initializer_range) or mamba_ssm (its own)",
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
                   "one repetition instead of every layer; slower steps on a GPU)",
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
    "progress": PROGRESS_MODES,
    "token_dtype": TOKEN_DTYPES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.lightning_decay": ("minimax", "fla"),
    "model.block_style": ("prenorm", "minimax"),
    "model.mamba_init": ("normal", "mamba_ssm"),
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


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors (unknown option, a value of the wrong type) raise `ConfigError`
    like every other bad value, so that `main` reports them all the same way."""

    def error(self, message):
        raise ConfigError(message)


USAGE = "./run train [--preset NAME] [--OPTION VALUE ...] [--model.FIELD VALUE ...]"

EXAMPLES = """\
`./run train ARGS` sets up .venv (Python >= 3.12, the pinned JAX) and runs `python -m train ARGS`
in it; after `./run setup`, `.venv/bin/python -m train ARGS` is the same. Where jaxla is
installed with pip (`pip install .` of this repository), it is `jaxla-train ARGS`.

Exit status: 0 the run finished; 1 it diverged (a NaN/Inf or a loss spike; nothing after the
last good checkpoint was saved); 2 a bad option, data or run folder (one line says which).
--distributed: when a process is lost, JAX's runtime stops the others within --heartbeat_timeout
seconds (at once when process 0 is lost), and a process that meets no coordinator within
--init_timeout stops too: SIGABRT, with JAX's message; start every process again with --resume.

Environment: with OUT set, config.json, metrics.jsonl, curves.png and summary.json are also
copied to $OUT/<run name>/ when the run ends or diverges (for machines that return only that
folder, as our GPU machines do; checkpoints stay in --run_dir).

Examples:
  ./run train
  ./run train --steps 2000 --hidden_size 384
  ./run train --preset gla_340m --batch_size 8 --seq_len 2048 --steps 300 --data random \
      --no-checkpoint
  ./run train --data mqar --preset tiny_gla --vocab_size 32 --seq_len 32 --batch_size 64 \
      --hidden_size 128 --num_heads 1 --use_short_conv --no-mlp --initializer_range 0.05 \
      --lr 1e-2 --min_lr_ratio 1 --weight_decay 0 --steps 200
  ./run train --resume --run_dir runs/default-stdlib --steps 1200
  # two processes (hosts), the same command on each, process_id 0 on the coordinator's host:
  ./run train --distributed --coordinator_address 10.0.0.1:8476 --num_processes 2 \
      --process_id 0 --preset gla_340m --mesh_fsdp 8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, usage=USAGE,
        description="Train a jaxla language model. With no arguments: the embedded default, a "
                    "byte-level GLA model on the Python standard library's source files.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    add_launch_arguments(parser, dest_prefix="launch.")
    return parser


def model_for_preset(preset: str) -> LMConfig:
    if preset == "default":
        return DEFAULT_MODEL
    if not is_preset(preset):
        raise ConfigError(f"--preset: {FIELD_RULES['preset'].text}, got {preset!r}")
    return LMConfig.preset(preset)


def _with_model_options(model: LMConfig, options: dict) -> LMConfig:
    """`model` with the `--model.*` options; LMConfig's own refusal names the option."""
    try:
        return model.replace(**options)
    except ValueError as exc:
        text = str(exc)
        named = [k for k in options if re.search(rf"\b{re.escape(k)}\b", text)]
        raise ConfigError(f"--{named[0] if named else 'model options'}: {text}") from None


def check_run_dir_exists(run_dir: Path):
    """`--resume` continues a run: its folder must exist."""
    if not run_dir.is_dir():
        raise ConfigError(f"--resume: no run folder {str(run_dir)!r} (give the --run_dir or "
                          f"--name of an existing run, or drop --resume to start one)")


def read_saved_config(run_dir: Path) -> TrainConfig | None:
    """The `config.json` of an existing run folder (None when the folder has none).

    Raises `ConfigError` when the folder does not exist (`--resume` continues a run, it does not
    start one) or when the file is not a valid config, naming the file."""
    check_run_dir_exists(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        return None
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--resume: {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno})") from None
    except (ConfigError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {path}: {exc}") from None


def parse_launch_args(argv: list[str] | None = None) -> LaunchOptions:
    """The launch options (`--distributed` ...) of a command line, read before anything touches
    a device. Raises `ConfigError` for any bad option of the command line (the training options
    are checked by `parse_args`), `LaunchError` for a bad launch option."""
    ns = vars(build_parser().parse_args(argv))
    return launch_options({k[len("launch."):]: v for k, v in ns.items()
                           if k.startswith("launch.")})


def parse_args(argv: list[str] | None = None, *, backend: str | None = None) -> TrainConfig:
    """The resolved config of a command line (`backend` picks the default compute dtype).

    With `--resume`, the run folder's `config.json` (when it has one) is the base and only the
    options given on the command line change it. Raises `ConfigError` for any bad option. The
    launch options (`--distributed` ...) are not part of the config: `main` reads them first with
    `parse_launch_args`, and they are skipped here.
    """
    ns = {k: v for k, v in vars(build_parser().parse_args(argv)).items()
          if not k.startswith("launch.")}
    model_over = {k[len("model."):]: v for k, v in ns.items() if k.startswith("model.")}
    train_over = {k: v for k, v in ns.items() if not k.startswith("model.")}

    base = None
    if train_over.get("resume"):
        defaults = TrainConfig()
        base = read_saved_config(run_path(
            train_over.get("name"), train_over.get("run_dir"),
            train_over.get("preset", defaults.preset), train_over.get("data", defaults.data)))
    if base is not None:
        if "preset" in train_over and train_over["preset"] != base.preset:
            raise ConfigError(f"--preset: the run was made with --preset {base.preset}, got "
                              f"{train_over['preset']!r} (drop --preset or start a new run)")
        # --overwrite is an action on the folder, not part of the run: not inherited.
        base = base.replace(overwrite=False)
        model = base.model
    else:
        base = TrainConfig()
        model = model_for_preset(train_over.get("preset", base.preset))
        if "dtype" not in model_over:
            import jax

            backend = backend or jax.default_backend()
            model_over["dtype"] = "float32" if backend == "cpu" else "bfloat16"
    model = _with_model_options(model, model_over) if model_over else model
    config = base.replace(model=model, **train_over)
    if config.tokenizer:
        from jaxla.tokenizer import check_vocab, load_tokenizer

        try:
            check_vocab(load_tokenizer(config.tokenizer), model.vocab_size)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"--tokenizer: {config.tokenizer}: {exc}") from None
    return config
