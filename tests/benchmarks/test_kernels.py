"""`python -m benchmarks.kernels` and its registry on tiny shapes (CPU): every op, dense and
packed, runs its jaxla variants (the Pallas kernels in interpret mode and the xla path, checked
against each other); every anchor variant whose package is absent says so in its row."""

import json
import sys
import types

import numpy as np
import pytest

from benchmarks.kernels import __main__ as runner
from benchmarks.kernels import registry

TINY = {
    "gla": dict(B=1, T=48, H=2, K=16, V=32),
    "simple_gla": dict(B=1, T=48, H=2, K=16, V=32),
    "lightning": dict(B=1, T=48, H=2, K=16, V=32),
    "selective_scan": dict(B=2, T=40, D=32, N=4),
}
ANCHORS = {"gla": ("jla", "fla", "cudnn causal"), "simple_gla": ("jla", "fla"),
           "lightning": ("jla", "fla"), "selective_scan": ("jla", "mamba_ssm")}
ABSENT = ("torch", "fla", "mamba_ssm", "jla")  # the anchors' packages, made unimportable


@pytest.fixture
def tiny(monkeypatch):
    """Every op with one tiny shape, 4 documents per packed row, no anchor package importable."""
    for op, dims in TINY.items():
        bench = registry.OPS[op]
        monkeypatch.setitem(registry.OPS, op, bench.__class__(
            **{**bench.__dict__, "shapes": (registry.Shape("tiny", dims),)}))
    monkeypatch.setattr(registry, "DOCUMENTS_PER_ROW", 4)
    for name in ABSENT:
        monkeypatch.setitem(sys.modules, name, None)


def test_registry_names_every_op_once():
    assert set(registry.OPS) == set(registry.DIFF_ARGS) == set(TINY) == set(ANCHORS)
    for op, bench in registry.OPS.items():
        names = [v.name for v in bench.variants]
        assert names[0] == "jaxla" and "jaxla xla" in names and len(set(names)) == len(names)
        assert set(ANCHORS[op]) <= set(names)


@pytest.mark.parametrize("op", list(TINY))
def test_every_op_runs_dense_and_packed(op, tiny, tmp_path, rng):
    """fwd+bwd of both jaxla variants, dense and packed; every anchor refuses in its row."""
    seed = int(rng.integers(1 << 30))
    runner.main(["--op", op, "--modes", "fwd+bwd", "--calls", "1", "--seed", str(seed),
                 "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    by = {(r["packed"], r["variant"]): r for r in rows}
    assert {r["packed"] for r in rows} == {0, 4}
    for packed in (0, 4):
        assert by[packed, "jaxla"]["ms"] > 0
        xla = by[packed, "jaxla xla"]
        assert xla["ms"] > 0 and xla["error"] < 2e-2  # bf16 inputs, every gradient vs the kernels
        for name in ANCHORS[op]:
            row = by[packed, name]
            assert row["ms"] is None and "error" not in row and row["note"], row
    for name in ANCHORS[op]:
        dense, packed = by[0, name]["note"], by[4, name]["note"]
        if name == "cudnn causal":  # dense: jax's cuDNN attention fails without a GPU
            assert packed == "dense attention only"
        else:  # the import fails before packing is looked at
            assert "unavailable" in dense and packed == dense


def test_fwd_rows_and_table(tiny, tmp_path, capsys, rng):
    runner.main(["--op", "gla", "--modes", "fwd", "--calls", "2", "--variant", "jaxla",
                 "jaxla xla", "--bandwidth", "1e12", "--seed", str(int(rng.integers(1 << 30))),
                 "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "kernels.json").read_text())["rows"]
    assert [(r["packed"], r["variant"]) for r in rows] == [
        (0, "jaxla"), (0, "jaxla xla"), (4, "jaxla"), (4, "jaxla xla")]
    for r in rows:
        assert r["mode"] == "fwd" and r["ms"] > 0 and r["floor_ms"] > 0
    assert max(r["error"] for r in rows if r["variant"] == "jaxla xla") < 2e-2
    table = capsys.readouterr().out
    assert "gla tiny B1 T48 H2 K16 V32 packed, 4 documents/row" in table and "jaxla xla" in table


def test_mamba_ssm_variant_wiring(monkeypatch, rng):
    """With a stand-in mamba_ssm: the dense call passes z, D, delta_bias and softplus on; packed
    rows are refused (mamba_ssm has no packed Mamba-1 kernel)."""
    calls = []

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
        calls.append(dict(u=u, D=D, z=z, delta_bias=delta_bias, softplus=delta_softplus))
        return u

    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    monkeypatch.setitem(sys.modules, interface.__name__, interface)

    build = next(v for v in registry.OPS["selective_scan"].variants if v.name == "mamba_ssm")
    assert build.torch and build.torch_layout is registry.time_last
    dims = dict(B=1, T=20, D=8, N=4)
    x = registry.OPS["selective_scan"].make(dims, False, int(rng.integers(1 << 30)))
    args = [x[name] for name in registry.DIFF_ARGS["selective_scan"]]
    assert build.build(x, False)(*args) is args[0]
    (call,) = calls
    assert call["softplus"] is True
    for name in ("u", "D", "z", "delta_bias"):
        assert call[name] is x[name]
    monkeypatch.setattr(registry, "DOCUMENTS_PER_ROW", 4)
    packed = registry.OPS["selective_scan"].make(dims, True, 0)
    assert build.build(packed, True).startswith("mamba_ssm has no packed kernel")


def test_cu_seqlens_flattens_every_row(rng):
    B, T, docs = 3, 50, 5
    ids = np.asarray(registry.segment_ids(B, T, docs, int(rng.integers(1 << 30))))
    cu = registry.cu_seqlens_of(ids)
    assert cu.dtype == np.int64 and cu[0] == 0 and cu[-1] == B * T and len(cu) == B * docs + 1
    flat = ids.reshape(-1)
    row = np.repeat(np.arange(B), T)
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        assert end > start  # every document is whole, inside one row, with one id
        assert len(set(flat[start:end])) == 1 and len(set(row[start:end])) == 1
    assert set(cu[:-1]) >= {b * T for b in range(B)}


def test_segment_ids_have_the_asked_documents(rng):
    ids = registry.segment_ids(3, 100, 16, seed=int(rng.integers(1 << 30)))
    for row in ids.tolist():
        assert row[0] == 0 and sorted(row) == row and len(set(row)) == 16


def test_case_inputs_override_dims():
    dims, x = registry.case_inputs("selective_scan", "mamba-370m", dims=[("T", 24), ("D", 8)])
    assert dims == dict(B=4, T=24, D=8, N=16) and x["u"].shape == (4, 24, 8)
    with pytest.raises(ValueError, match="has dims"):
        registry.case_inputs("gla", "anchor", dims=[("D", 8)])
    with pytest.raises(ValueError, match="no shape 'nope'"):
        registry.shape_named("gla", "nope")


@pytest.mark.parametrize("argv", [["--calls", "0"], ["--op", "nope"],
                                  ["--variant", "mamba-ssm"], ["--shape", "anchor", "nope"]])
def test_runner_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        runner.main(argv)
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["gla_tune", "gla_fwd_profile", "simple_gla_tune",
                                  "selective_scan_tune", "scan_profile"])
def test_gpu_tools_take_registry_shapes(tool, capsys):
    """The tuning and profiling tools read their shapes from the registry: a dim the shape does
    not have is an argparse error naming --dims (exit 2), before any work."""
    module = __import__(f"benchmarks.gpu.{tool}", fromlist=["main"])
    with pytest.raises(SystemExit) as exit_:
        module.main(["--dims", "X=3"])
    assert exit_.value.code == 2 and "--dims" in capsys.readouterr().err


def test_gla_tune_tables_start_with_the_ops_default():
    """Each gla_tune table's first row (the reference of the others) is the op's configuration
    for the shape; V tiles wider than V are clipped to it and repeats dropped."""
    from benchmarks.gpu import gla_tune

    default = (8, 2, 1, 32, 128)  # gla_340m's layer (K=128, V=256) takes block_v 128
    rows = gla_tune.with_default_first(default, gla_tune.GRAD_VARIANTS, k_at=3, v_at=4,
                                       K=128, V=256)
    assert rows[0] == default and len(rows) == len(set(rows))
    assert (8, 2, 1, 16, 256) in rows  # the whole V in one tile is among the variants
    narrow = gla_tune.with_default_first(default, gla_tune.GRAD_VARIANTS, k_at=3, v_at=4,
                                         K=128, V=128)
    assert narrow[0] == default and max(p[4] for p in narrow) == 128
    assert len(narrow) == len(set(narrow)) < len(gla_tune.GRAD_VARIANTS) + 1
