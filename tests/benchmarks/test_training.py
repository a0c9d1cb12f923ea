"""`python -m benchmarks.training`: a tiny preset end to end (`python -m train` in a subprocess)."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import training as bench
from benchmarks.torch_training import PRESET_OF

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


def test_anchor_rows_carry_their_gpu_time(monkeypatch, capsys):
    """An anchor's RESULT and PROFILE lines both reach its row, and the table says how busy its
    steps kept the GPU."""
    seen = {}

    def anchor_run(cmd, **kwargs):
        seen["cmd"] = cmd
        out = ('step 0 loss 10.5\nRESULT {"tokens_per_s": 99000.0, "step_ms": 165.0, '
               '"params": 341707776, "peak_memory_bytes": 16339038720}\n'
               'CUDA time of 3 steps by kernel\nPROFILE {"steps": 3, "device_ms_per_step": 108.9}\n')
        return bench.subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(bench.subprocess, "run", anchor_run)
    args = SimpleNamespace(batch_size=8, seq_len=2048, steps=40, warmup=10, anchor_profile=3)
    row = bench.run_anchor("fla_gla_340m", args, timeout=60, out=None)
    assert seen["cmd"][-2:] == ["--profile", "3"]
    assert (row["tokens_per_s"], row["device_ms_per_step"]) == (99000.0, 108.9)
    assert bench.launch_notes([row]) == [
        "fla_gla_340m (PyTorch): 108.9 ms of GPU time per step in 165.0-ms steps (GPU busy 66 %)"]


def test_bench_refuses_a_negative_anchor_profile(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--presets", "tiny_gla", "--anchor_profile", "-1"])
    assert exit_.value.code == 2 and "--anchor_profile" in capsys.readouterr().err



def test_each_preset_is_compared_with_its_own_anchor(tmp_path, monkeypatch):
    """Two presets beside their two anchors in one call: each ratio is against the preset's own
    anchor, and the MiniMax preset trains with the fields that make it the anchor's model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(bench, "gpu_memory_in_use", lambda: None)
    speed = {"fla_gla_340m": 100.0, "hf_minimax_hybrid_340m": 40.0,
             "gla_340m": 150.0, "minimax_hybrid_340m": 120.0}
    commands = {}

    def fake_run(cmd, **kwargs):
        anchor = "--model" in cmd
        name = cmd[cmd.index("--model" if anchor else "--preset") + 1]
        commands[name] = cmd
        result = {"tokens_per_s": speed[name], "step_ms": 1.0, "params": 1e6,
                  "peak_memory_bytes": 2**30}
        if anchor:
            return bench.subprocess.CompletedProcess(cmd, 0, "RESULT " + json.dumps(result), "")
        summary = Path(cmd[cmd.index("--run_dir") + 1]) / "summary.json"
        summary.write_text(json.dumps(result | {"tflops_per_device": 1.0, "mfu": 0.1,
                                                "mfu_6n": 0.1, "compile_s": 1.0}))
        return bench.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    (tmp_path / "runs" / "bench-gla_340m").mkdir(parents=True)
    (tmp_path / "runs" / "bench-minimax_hybrid_340m").mkdir(parents=True)
    rc = bench.main(["--presets", "gla_340m,minimax_hybrid_340m", "--steps", "4", "--warmup", "1",
                     "--anchors", "fla_gla_340m,hf_minimax_hybrid_340m", "--anchor_profile", "0"])
    assert rc == 0
    assert "--block_style" not in commands["gla_340m"]
    flags = commands["minimax_hybrid_340m"]
    for name, value in PRESET_OF["hf_minimax_hybrid_340m"][1].items():
        assert flags[flags.index(f"--{name}") + 1] == str(value)
    table = (tmp_path / "out" / "train_bench.md").read_text()
    assert "| 1.50x fla_gla_340m |" in table and "| 3.00x hf_minimax_hybrid_340m |" in table


def test_bench_refuses_an_unknown_anchor(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--presets", "tiny_gla", "--anchors", "fla_gla_1b"])
    assert exit_.value.code == 2 and "--anchors: unknown fla_gla_1b" in capsys.readouterr().err
