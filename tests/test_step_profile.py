"""`python -m benchmarks.step_profile`: the summary of a device trace, and the CLI on CPU."""

import json
import re
from pathlib import Path

import jax.profiler as jp
import pytest

from benchmarks.step_profile import PALLAS_PREFIXES, kind_of, main, summarize


def _event(meta_id, start_us, dur_us, stats=""):
    return (f"events {{ metadata_id: {meta_id} offset_ps: {start_us * 10**6} "
            f"duration_ps: {dur_us * 10**6} {stats} }}")


def _xspace(gpu_lines: dict, names: list[str]) -> jp.ProfileData:
    """A GPU plane with `gpu_lines` ({line name: [event text]}) and a host plane whose events
    must be left out."""
    meta = " ".join(f'event_metadata {{ key: {i} value {{ id: {i} name: "{n}" }} }}'
                    for i, n in enumerate(names, start=1))
    stat_meta = ('stat_metadata { key: 90 value { id: 90 name: "hlo_op" } } '
                 'stat_metadata { key: 91 value { id: 91 name: "memcpy_details" } }')
    lines = " ".join(f'lines {{ id: {j} name: "{name}" timestamp_ns: 0 {" ".join(events)} }}'
                     for j, (name, events) in enumerate(gpu_lines.items(), start=1))
    host = (f'planes {{ id: 2 name: "/host:CPU" lines {{ id: 1 name: "python" timestamp_ns: 0 '
            f'{_event(1, 0, 999)} }} {meta} }}')
    return jp.ProfileData.from_text_proto(
        f'planes {{ id: 1 name: "/device:GPU:0" {lines} {meta} {stat_meta} }} {host}')


def test_summary_per_step_by_kind_and_copies_by_op():
    names = ["gla_chunk_bwd_grads", "nvjet_sm90_tst_256x128_NNT", "MemcpyD2D", "Memset 3",
             "loop_add_fusion", "gemm_fusion_dot_12", "memcpy128"]

    def copy(start, op, size):
        stats = (f'stats {{ metadata_id: 90 str_value: "{op}" }} stats {{ metadata_id: 91 '
                 f'str_value: "kind_src:device kind_dst:device size:{size} dest:0 async:1" }}')
        return _event(3, start, 4, stats)

    xspace = _xspace({
        "Stream #14(Compute,MemcpyD2D)": [
            _event(1, 0, 30), _event(2, 40, 10), copy(60, "copy.7", 2_000_000),
            copy(70, "copy.7", 4_000_000), copy(80, "dynamic-slice.2", 1_000_000),
            _event(4, 90, 2), _event(5, 100, 6), _event(6, 110, 8), _event(1, 200, 30),
            # XLA's copy kernel (a dynamic-update-slice in a loop): a copy, with no CUPTI size.
            _event(7, 120, 5, 'stats { metadata_id: 90 str_value: "dynamic-update-slice.3" }')],
        "Stream #15(MemcpyH2D)": [_event(5, 0, 6)],
        # A summary line over the streams' work: counting it would count kernels twice.
        "XLA Ops": [_event(5, 0, 500)],
    }, names)
    r = summarize(xspace, steps=2)
    assert r["gpu"] is True
    assert r["by_kind_ms"] == pytest.approx({
        "matmuls": (10 + 8) / 2e3, "Pallas kernels": 60 / 2e3,
        "copies and memsets": (3 * 4 + 2 + 5) / 2e3, "other": 12 / 2e3})
    assert r["device_ms_per_step"] == pytest.approx(109 / 2e3)
    first = r["by_name"][0]
    assert (first["name"], first["kind"], first["calls"]) == ("gla_chunk_bwd_grads",
                                                              "Pallas kernels", 1.0)
    assert [(c["hlo_op"], c["calls"], c["mb_each"]) for c in r["copies_by_op"]] == [
        ("copy.7", 1.0, 3.0), ("dynamic-update-slice.3", 0.5, 0.0), ("dynamic-slice.2", 0.5, 1.0)]


def test_every_pallas_kernel_is_counted_as_one():
    """Each `pallas_call(name=...)` of pallas_kernels has a name `kind_of` recognises."""
    names = set()
    for path in Path("pallas_kernels").rglob("*.py"):
        names |= set(re.findall(r'name=f?"([a-z_]+)', path.read_text()))
    kernels = {n for n in names if n.startswith(("gla", "simple_gla", "selective_scan"))}
    assert len(kernels) >= 10, sorted(names)
    assert all(kind_of(n) == "Pallas kernels" for n in kernels), sorted(kernels)
    assert all(n.startswith(PALLAS_PREFIXES) for n in kernels)
    assert kind_of("gla_chunk_bwd_grads_exact") == "Pallas kernels"


def test_cli_traces_the_steps_after_the_warmup(tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["--warmup", "1", "--steps", "2", "--json", str(out), "--",
                 "--batch_size", "8", "--seq_len", "32"]) == 0
    r = json.loads(out.read_text())
    assert r["steps"] == 2 and r["gpu"] is False and r["device"] == "cpu"
    assert r["wall_ms_per_step"] > 0 and r["device_ms_per_step"] > 0 and r["by_name"]
    assert "| kind | ms per step | share |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--", "--steps", "5"],
                                  ["--", "--run_dir", "x"], ["--", "--batch_size", "0"],
                                  ["--", "--batch_size", "3"]])
def test_cli_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "python -m benchmarks.step_profile: error:" in capsys.readouterr().err
