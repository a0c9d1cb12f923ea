"""The report pipeline on a small subset of its cases (the full report runs in ~80 s)."""

import importlib.util
import math
import os

import pytest

from jaxla.flops import __main__ as cli
from jaxla.flops.report import build as report


def test_every_case_is_well_formed():
    for title, cases_fn in report.GROUPS:
        for case in cases_fn():
            assert case.formula.total > 0, (title, case.name)
            assert case.why and "\n" not in case.why, case.name
            assert len(case.args) > 0, case.name


def test_loop_case_is_corrected():
    (case,) = report.loop_cases()
    row = report.measure(case)
    assert row.ratio_lowered == pytest.approx(1.0)
    assert row.lowered.raw.flops < case.formula.total / 5  # XLA alone: one of 10 iterations
    cells = report._row_cells(row)
    assert cells[7].startswith("10x; raw")


def test_build_writes_markdown_and_plots(tmp_path, monkeypatch):
    small = (("Loops", report.loop_cases), ("Nothing yet", list))
    monkeypatch.setattr(report, "GROUPS", small)
    monkeypatch.setattr(report, "GEN_TS", (8, 16))
    monkeypatch.setattr(report, "GEN_PLOT_TMAX", 64)
    out = tmp_path / "flops"
    assert cli.main(["--out", str(out)]) == 0
    md = (out / "REPORT.md").read_text()
    assert report.REPRODUCE in md.splitlines()[2]  # the command comes first
    assert "lax.scan of matmuls" in md and "No cases." in md
    for name in ("generation.png", "training_per_token.png"):
        assert os.path.getsize(out / name) > 10_000
    assert "| transformer_340m | KV cache |" in md
    assert "KV cache, preallocated (jaxla's `generate`)" in md
    # Every kernel at the benchmark shapes, its estimate beside its formula (ratio 1 within 1%).
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ") and "`" in line
            and ("_fwd" in line or "_bwd" in line)]
    assert len(rows) >= 16
    assert all(abs(float(r[5]) - 1) <= 0.01 and abs(float(r[8].rstrip(" |")) - 1) <= 0.01
               for r in rows)


def test_plots_without_matplotlib_are_one_clear_error(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m jaxla.flops: error: the plots need matplotlib")
    assert "--no-plots" in err and not any(tmp_path.iterdir())


def test_device_check_runs_on_cpu(tmp_path, monkeypatch, capsys):
    import json

    from jaxla.flops.report import device_check

    monkeypatch.setenv("OUT", str(tmp_path / "not_read"))
    assert device_check.main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "not_read").exists()
    result = json.loads((tmp_path / "flops_device.json").read_text())
    assert result["device"]["peak_bf16"] is None  # CPU: no MFU
    matmul, gla = result["rows"]
    assert matmul["compiled"] == matmul["formula"] and gla["error"] is None
    assert "co/formula" in capsys.readouterr().out.splitlines()[-3]


def test_number_format():
    assert report._num(33554432.0) == "33.55M"
    assert report._num(None) == "n/a"
    assert report._r(math.nan) == "n/a"


def test_layer_and_model_rows_agree():
    # Two of the report's rows, measured as the report does (the full check of every layer and
    # model is tests/flops/test_layers.py and test_models.py).
    layers = {c.name: c for c in report.layer_cases()}
    models = {c.name: c for c in report.model_cases()}
    for case in (layers["attention decode step"], models["tiny_attention generate(cached)"]):
        row = report.measure(case)
        assert row.ratio_lowered == pytest.approx(1.0, abs=1e-4), case.name
    assert row.compiled is None and report._row_cells(row)[5] == "-"  # lowered-only case
