"""`train.main` end to end: files, exact resume after a kill, the NaN guard, run-dir safety."""

import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import pytest

from train import loop
from train.checkpoint import Checkpointer

from .faults import Killed, kill_after, loss_times
from .helpers import corpus, tiny_args, tiny_config


def _records(run_dir, event):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_smoke_main_writes_checkpoint_log_plot_and_config(tmp_path, rng, capsys):
    data = corpus(tmp_path, rng)
    run = tmp_path / "run"
    rc = loop.main(tiny_args(run, data, "--steps", "6", "--eval_every", "3",
                             "--save_every", "3"))
    assert rc == 0
    assert Checkpointer(run).all_steps() == [3, 6]
    config = json.loads((run / "config.json").read_text())
    assert config["steps"] == 6 and config["model"]["layer_pattern"] == ["gla"]
    train = _records(run, "train")
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in train)
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in _records(run, "eval")] == [3, 6]
    assert (run / "curves.png").stat().st_size > 10_000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_run"] == 6 and summary["tokens_per_s"] > 0
    assert summary["mfu"] is None  # no peak FLOP/s for a CPU
    # Without --resume an existing run is not silently continued or overwritten.
    capsys.readouterr()
    assert loop.main(tiny_args(run, data, "--steps", "6")) == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error: --resume: ") and err.count("\n") == 1
    assert Checkpointer(run).all_steps() == [3, 6]


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path, rng):
    data = corpus(tmp_path, rng)
    common = ("--steps", "8", "--save_every", "3", "--eval_every", "4")
    full = loop.train(tiny_config(tmp_path / "full", data, *common))
    # Killed after step 5: the newest checkpoint is step 3.
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        loop.train(tiny_config(cut, data, *common), on_step=kill_after(5))
    assert Checkpointer(cut).all_steps() == [3]
    first = {r["step"]: r["loss"] for r in _records(cut, "train")}
    assert sorted(first) == [1, 2, 3, 4]  # step 5's metrics were still in flight
    assert all(first[s] == full["losses"][s] for s in first)
    # --resume takes everything else from the saved config.json.
    second = loop.train(loop.parse_args(["--resume", "--run_dir", str(cut), "--progress", "off"],
                                        backend="cpu"))
    assert sorted(second["losses"]) == [4, 5, 6, 7, 8]
    for step in range(4, 9):
        got = second["losses"][step]
        assert got == full["losses"][step], (step, got, full["losses"][step])
    assert [r["val_loss"] for r in second["evals"]] == [r["val_loss"] for r in full["evals"]]
    # The log of the resumed run reads like the uninterrupted one: steps 4-5 are not doubled.
    assert [(r["step"], r["loss"]) for r in _records(cut, "train")] == \
        [(r["step"], r["loss"]) for r in _records(tmp_path / "full", "train")]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, rng):
    data = corpus(tmp_path, rng)
    run = tmp_path / "run"
    config = tiny_config(run, data, "--steps", "8", "--save_every", "2", "--eval_every", "100")
    with pytest.raises(loop.TrainingDiverged, match="step 4: loss nan") as info:
        loop.train(config, on_step=loss_times(4, float("nan")))
    assert info.value.step == 4 and info.value.last_good == 2
    assert str(run / "checkpoints" / "2") in str(info.value)
    # Step 4 would have been saved: the guard ran first, so the newest checkpoint is step 2.
    assert Checkpointer(run).all_steps() == [2]
    assert _records(run, "diverged")[0]["step"] == 4
    assert not (run / "summary.json").exists()


def test_without_matplotlib_the_run_says_so_and_writes_no_plot(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    monkeypatch.delenv("OUT", raising=False)
    run = SimpleNamespace(config=SimpleNamespace(plot=True, run_name="r"), run_dir=tmp_path,
                          main=True)
    lines = []
    loop._finish_files(run, lines.append)
    assert lines == ["curves.png not written: matplotlib is not installed (pip install "
                     "'jaxla[plots]')"]
    assert not (tmp_path / "curves.png").exists()
