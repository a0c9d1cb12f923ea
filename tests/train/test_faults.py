"""Fault injection end to end: kills during a save, damaged checkpoint files, broken JSON, a
changed model, a missing run folder, a diverging run.

Each case checks the promise of `train.checkpoint`: nothing reported saved is lost, nothing
damaged is loaded (a resume from the intact checkpoint reproduces the uninterrupted run's losses
bit for bit), and the program says what happened in one line, without a traceback.

One uninterrupted run (`full`) and one run killed after step 7 (`interrupted`, checkpoints 3
and 6) are made once per module; each case damages a copy of the interrupted run. A compilation
cache shared by the module (and its subprocesses) keeps the repeated runs of the tiny model fast.
"""

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SEED
from train import loop
from train.checkpoint import Checkpointer

from .faults import Killed, kill_after, loss_times
from .helpers import compile_cache, corpus, tiny_args, tiny_config

COMMON = ("--steps", "8", "--save_every", "3", "--eval_every", "4", "--no-plot")
KILL_DRIVER = Path(__file__).with_name("kill_during_save.py")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with compile_cache(tmp_path_factory.mktemp("jax_cache")):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request):
    """`{"data": corpus, "full": losses by step, "interrupted": run folder}`."""
    base = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])
    data = corpus(base, rng)
    full = loop.train(tiny_config(base / "full", data, *COMMON), echo=lambda *a: None)
    interrupted = base / "interrupted"
    with pytest.raises(Killed):
        loop.train(tiny_config(interrupted, data, *COMMON), echo=lambda *a: None,
                   on_step=kill_after(7))
    assert Checkpointer(interrupted).all_steps() == [3, 6]
    return {"data": data, "full": full["losses"], "interrupted": interrupted}


def _copy(runs, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["interrupted"], run)
    return run


def _train_losses(run) -> dict[int, float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


def _resume(run, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = loop.main(["--resume", "--run_dir", str(run), "--progress", "off"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _assert_resumed_exactly(run, runs, first_step):
    """The resumed steps reproduce the uninterrupted run; the final checkpoints are intact."""
    losses = _train_losses(run)
    assert sorted(losses) == list(range(1, 9))
    for step in range(first_step, 9):
        assert losses[step] == runs["full"][step], (step, losses[step], runs["full"][step])
    ckpt = Checkpointer(run)
    assert ckpt.all_steps() == [6, 8] and all(ckpt.check(s) is None for s in (6, 8))


def _largest_state_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _truncate(step_dir, rng):
    f = _largest_state_file(step_dir)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _overwrite_4k(step_dir, rng):
    f = _largest_state_file(step_dir)
    data = bytearray(f.read_bytes())
    at = int(rng.integers(0, len(data) - 4096))
    data[at:at + 4096] = rng.bytes(4096)
    f.write_bytes(bytes(data))


def _break_meta_json(step_dir, rng):
    meta = step_dir / "meta" / "metadata"
    text = meta.read_text()
    meta.write_text(text.replace('"step": 6,', '"step"; 6,'))  # same size, not JSON
    assert meta.read_text() != text


@pytest.mark.parametrize("damage,why", [
    (_truncate, "bytes, checksums.json says"),
    (_overwrite_4k, "does not match its sha256"),
    (_break_meta_json, "meta/metadata does not match its sha256"),
])
def test_damaged_latest_checkpoint_is_skipped_for_the_intact_one(runs, tmp_path, rng, capsys,
                                                                 damage, why):
    run = _copy(runs, tmp_path)
    damage(run / "checkpoints" / "6", rng)
    rc, out, err = _resume(run, capsys)
    assert rc == 0 and err == ""
    [line] = [ln for ln in out.splitlines() if " is damaged " in ln]
    assert line.strip().startswith("checkpoint step 6 is damaged (") and why in line
    assert line.endswith(f"moved to {run.absolute() / 'damaged_checkpoints' / '6'}")
    assert f"resumed from {run.absolute() / 'checkpoints' / '3'} at step 3" in out
    _assert_resumed_exactly(run, runs, first_step=4)


def test_no_intact_checkpoint_stops_the_run(runs, tmp_path, rng, capsys):
    run = _copy(runs, tmp_path)
    _truncate(run / "checkpoints" / "6", rng)
    _overwrite_4k(run / "checkpoints" / "3", rng)
    log_before = (run / "metrics.jsonl").read_text()
    rc, out, err = _resume(run, capsys)
    assert rc == 2
    [line] = err.splitlines()
    assert line.startswith(f"train: error: no intact checkpoint in {run.absolute()}")
    assert "step 6: " in line and "step 3: " in line and "--overwrite" in line
    assert Checkpointer(run).all_steps() == [3, 6]  # left as they were, for a look
    assert (run / "metrics.jsonl").read_text() == log_before


@pytest.mark.parametrize("point", ["orbax", "manifest"])
def test_kill_during_save_loses_nothing_reported_saved(runs, tmp_path, capsys, point):
    """SIGKILL inside the save of step 6: before Orbax's rename, or before the manifest."""
    run = tmp_path / "run"
    argv = [*tiny_args(run, runs["data"], *COMMON), "--progress", "lines"]
    proc = subprocess.run([sys.executable, str(KILL_DRIVER), point, "6", *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    reported = [int(ln.split(":")[0].split()[1]) for ln in proc.stdout.splitlines()
                if ln.startswith("step ") and ": saved " in ln]
    assert reported == [3]
    ckpt = Checkpointer(run)
    assert all(ckpt.check(s) is None for s in reported)
    rc, out, err = _resume(run, capsys)
    assert rc == 0 and err == ""
    damaged = [ln for ln in out.splitlines() if " is damaged " in ln]
    if point == "manifest":  # the step folder is complete but was never reported saved
        assert len(damaged) == 1
        assert "checkpoint step 6 is damaged (no checksums.json: the save did not finish)" in \
            damaged[0]
    else:  # Orbax's temporary folder is not a checkpoint, and it is cleaned up
        assert damaged == []
        assert not list((run / "checkpoints").glob("*tmp*"))
    assert "at step 3" in out
    _assert_resumed_exactly(run, runs, first_step=4)


def test_broken_config_json_is_one_line_naming_the_file(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    config = run / "config.json"
    config.write_text(config.read_text().replace('"steps": 8,', '"steps": 8'))
    rc, out, err = _resume(run, capsys)
    assert rc == 2
    assert err.splitlines() == [f"train: error: --resume: {config} is not valid JSON (Expecting "
                                f"',' delimiter at line {_line_of(config, 'steps') + 1}, "
                                f"column 3)"]
    assert Checkpointer(run).all_steps() == [3, 6]


def _line_of(path, key) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if f'"{key}"' in ln)


def test_config_json_with_a_bad_value_names_the_file_and_option(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    config = run / "config.json"
    config.write_text(config.read_text().replace('"seq_len": 32', '"seq_len": -32'))
    rc, out, err = _resume(run, capsys)
    assert rc == 2
    assert err == f"train: error: --resume: {config}: --seq_len: must be >= 2, got -32\n"


def test_changed_model_config_names_the_fields(runs, tmp_path, capsys):
    run = _copy(runs, tmp_path)
    capsys.readouterr()
    rc = loop.main(["--resume", "--run_dir", str(run), "--hidden_size", "128",
                    "--num_heads", "4"])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err
    assert err.splitlines() == ["train: error: --resume: checkpoint step 6 holds another model "
                                "(hidden_size: 64 -> 128; num_heads: 2 -> 4); drop the model "
                                "options that differ, or start a new run with another --run_dir"]
    assert Checkpointer(run).all_steps() == [3, 6]


def test_resume_of_a_missing_run_folder_is_an_error(tmp_path, capsys):
    run = tmp_path / "no_such_run"
    rc = loop.main(["--resume", "--run_dir", str(run)])
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in out + err
    assert err == (f"train: error: --resume: no run folder {str(run)!r} (give the --run_dir or "
                   f"--name of an existing run, or drop --resume to start one)\n")
    assert not run.exists()


def test_diverging_run_stops_before_saving_and_names_the_good_checkpoint(runs, tmp_path, capsys):
    """A real divergence, not an injected one: lr 100 without clipping sends the loss from ~5.5
    to ~1e5 in one step (finite: the NaN check alone would let it run and save)."""
    run = tmp_path / "run"
    argv = tiny_args(run, runs["data"], "--lr", "100", "--clip_norm", "0", "--warmup_steps", "0",
                     "--steps", "6", "--save_every", "1", "--eval_every", "100", "--no-plot")
    capsys.readouterr()
    assert loop.main(argv) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    [line] = err.splitlines()
    [record] = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["event"] == "diverged"]
    step = record["step"]
    assert np.isfinite(record["loss"]) and record["loss"] > 100
    assert line.startswith(f"train: step {step}: loss ") and "times the median" in line
    saved = Checkpointer(run).all_steps()
    assert saved and max(saved) == step - 1
    assert line.endswith(f"the last good checkpoint is step {step - 1} "
                         f"({run.absolute() / 'checkpoints' / str(step - 1)})")


def test_injected_loss_spike_stops_before_saving(runs, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(loop.TrainingDiverged, match="times the median") as info:
        loop.train(tiny_config(run, runs["data"], *COMMON, "--spike_window", "4"),
                   echo=lambda *a: None, on_step=loss_times(6, 10.0))
    assert info.value.step == 6 and info.value.last_good == 3
    assert Checkpointer(run).all_steps() == [3]  # step 6 would have been saved
    [record] = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["event"] == "diverged"]
    assert record["step"] == 6 and "previous 4 steps (--spike_factor 3)" in record["reason"]
