"""The command line: presets, overrides in both spellings, types, JSON round trip, resume base."""

import dataclasses
import json

import pytest

from jaxla.models import LMConfig
from train.config import (
    DEFAULT_MODEL,
    MODEL_HELP,
    TRAIN_HELP,
    ConfigError,
    TrainConfig,
    build_parser,
    parse_args,
)


def test_defaults_are_the_embedded_byte_model():
    c = parse_args([], backend="cpu")
    assert c.preset == "default" and c.data == "stdlib"
    assert c.model == DEFAULT_MODEL.replace(dtype="float32")
    assert c.model.vocab_size == 256 and c.model.layer_pattern == ("gla",)


def test_compute_dtype_defaults_by_backend():
    assert parse_args([], backend="cpu").model.dtype == "float32"
    gpu = parse_args(["--preset", "gla_340m"], backend="gpu")
    assert gpu.model.dtype == "bfloat16" and gpu.model.param_dtype == "float32"
    assert parse_args(["--dtype", "bfloat16"], backend="cpu").model.dtype == "bfloat16"


def test_preset_and_overrides_in_both_spellings():
    c = parse_args(["--preset", "gla_340m", "--model.hidden_size", "512", "--num_layers", "6",
                    "--layer_pattern", "gla,attention", "--no-tie_embeddings", "--head_dim",
                    "none", "--steps", "7", "--lr", "1e-3", "--no-checkpoint"], backend="cpu")
    ref = LMConfig.gla_340m()
    assert c.model.vocab_size == ref.vocab_size and c.model.num_heads == ref.num_heads
    assert c.model.hidden_size == 512 and c.model.num_layers == 6
    assert c.model.layer_pattern == ("gla", "attention")
    assert c.model.tie_embeddings is False and c.model.head_dim is None
    assert c.steps == 7 and c.lr == 1e-3 and c.checkpoint is False


def test_every_option_has_help_and_appears_in_help_text():
    text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            assert f.name in TRAIN_HELP and f"--{f.name}" in text
    for f in dataclasses.fields(LMConfig):
        assert f.name in MODEL_HELP and f"--model.{f.name}" in text


@pytest.mark.parametrize("argv", [["--data", "nope"], ["--data", "tokens"], ["--steps", "0"],
                                  ["--val_fraction", "1.5"], ["--preset", "nope"],
                                  ["--num_heads", "3"], ["--mlp", "maybe"],
                                  ["--loss_chunk", "-1"]])
def test_bad_options_are_refused(argv):
    with pytest.raises((ValueError, SystemExit)):
        parse_args(argv, backend="cpu")


def test_json_round_trip():
    c = parse_args(["--preset", "tiny_hybrid", "--seq_len", "32"], backend="cpu")
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c


def test_resume_reads_saved_config_and_applies_only_given_options(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = parse_args(["--preset", "tiny_gla", "--seq_len", "32", "--lr", "0.01",
                        "--overwrite", "--run_dir", str(run)], backend="cpu")
    (run / "config.json").write_text(saved.to_json())
    c = parse_args(["--resume", "--run_dir", str(run), "--steps", "99"], backend="gpu")
    assert c.resume and c.steps == 99
    assert c.seq_len == 32 and c.lr == 0.01 and c.preset == "tiny_gla"
    assert c.model == saved.model  # the dtype stays as saved, whatever the backend
    assert not c.overwrite  # an action on the folder, not inherited
    with pytest.raises(ConfigError, match="--preset"):
        parse_args(["--resume", "--run_dir", str(run), "--preset", "gla_340m"], backend="cpu")
