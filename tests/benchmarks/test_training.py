"""`python -m benchmarks.training`: a tiny preset end to end (`python -m train` in a subprocess)."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import training as bench

REPO = Path(__file__).resolve().parents[2]


def test_bench_runs_a_preset_and_reports_its_throughput(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run folder goes under runs/ of the working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    rc = bench.main(["--presets", "tiny_gla", "--batch_size", "2", "--seq_len", "64",
                     "--steps", "8", "--warmup", "3", "--budget_s", "300",
                     "--", "--num_devices", "1"])
    assert rc == 0
    [row] = json.loads((tmp_path / "out" / "train_bench.json").read_text())
    assert row["preset"] == "tiny_gla" and row["rc"] == 0 and not row["oom"]
    assert row["tokens_per_s"] > 0 and row["step_ms"] > 0
    assert "gpu_memory_before" in row  # None where nvidia-smi is missing
    table = (tmp_path / "out" / "train_bench.md").read_text()
    assert "| tiny_gla | False |" in table and f"{row['tokens_per_s']:,.0f}" in table


def test_bench_refuses_a_warmup_that_leaves_no_timed_step(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--presets", "tiny_gla", "--steps", "20", "--warmup", "20"])
    assert "--warmup must be in [0, --steps)" in capsys.readouterr().err


@pytest.mark.parametrize("writes_summary", [True, False])
def test_a_run_timed_out_after_its_summary_keeps_its_numbers(writes_summary, tmp_path, monkeypatch):
    """A run killed while exiting (after summary.json) is measured; one killed earlier is not,
    and a summary left by an earlier run is never read as this run's."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "bench-tiny_gla"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"tokens_per_s": 1.0, "step_ms": 1.0}))
    measured = {"tokens_per_s": 1234.5, "step_ms": 6.5}

    def killed(cmd, **kwargs):
        if writes_summary:
            (run_dir / "summary.json").write_text(json.dumps(measured))
        raise bench.subprocess.TimeoutExpired(cmd, kwargs["timeout"], output="step 1\n")

    monkeypatch.setattr(bench, "gpu_memory_in_use", lambda: None)
    monkeypatch.setattr(bench.subprocess, "run", killed)
    args = SimpleNamespace(batch_size=2, seq_len=64, steps=8, warmup=3, extra=[])
    row = bench.run_preset("tiny_gla", args, remat=False, timeout=5, out=None)
    assert row["rc"] == -1
    if writes_summary:
        assert (row["tokens_per_s"], row["step_ms"]) == (1234.5, 6.5)
    else:
        assert "tokens_per_s" not in row
