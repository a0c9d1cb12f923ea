"""`python -m benchmarks.kernels` on tiny shapes (CPU): every variant of a case runs or says why."""

import json

import pytest

from benchmarks.kernels import __main__ as runner
from benchmarks.kernels import registry


@pytest.fixture
def tiny(monkeypatch):
    shape = registry.Shape("tiny", dict(B=1, T=48, H=2, K=16, V=32))
    monkeypatch.setitem(registry.OPS, "gla",
                        registry.OPS["gla"].__class__(**{**registry.OPS["gla"].__dict__,
                                                         "shapes": (shape,)}))
    monkeypatch.setattr(registry, "DOCUMENTS_PER_ROW", 4)


def test_runner_times_and_checks_every_variant(tiny, tmp_path, capsys):
    runner.main(["--op", "gla", "--calls", "2", "--variant", "jaxla", "jaxla xla", "fla",
                 "--bandwidth", "1e12", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    by = {(r["packed"], r["variant"], r["mode"]): r for r in rows}
    for packed in (0, 4):
        for mode in ("fwd", "fwd+bwd"):
            assert by[packed, "jaxla", mode]["ms"] > 0
            xla = by[packed, "jaxla xla", mode]
            assert xla["ms"] > 0 and xla["error"] < 2e-2  # bf16 inputs, against jaxla's kernels
            assert by[packed, "fla", mode]["ms"] is None and by[packed, "fla", mode]["note"]
    assert by[4, "fla", "fwd"]["note"].startswith("FLA takes packed documents")
    table = capsys.readouterr().out
    assert "gla tiny B1 T48 H2 K16 V32 packed, 4 documents/row" in table and "jaxla xla" in table


def test_segment_ids_have_the_asked_documents():
    ids = registry.segment_ids(3, 100, 16, seed=1)
    for row in ids.tolist():
        assert row[0] == 0 and sorted(row) == row and len(set(row)) == 16
