"""`python -m benchmarks.decode --tiny`: every jaxla row and the table, on CPU."""

import json

from benchmarks.decode import main


def test_decode_benchmark_tiny_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert main(["--tiny", "--models", "Mamba,Transformer", "--new_tokens", "4",
                 "--batch", "2", "--prompt", "5", "--naive_max", "4", "--no-compare"]) == 0
    rows = json.loads((tmp_path / "decode_bench.json").read_text())
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("jaxla Mamba", "recurrent state"), ("jaxla Transformer", "KV cache"),
        ("jaxla Transformer", "naive re-encode")]
    for r in rows:
        assert r["batch"] == 2 and r["new"] == 4 and r["tokens_per_s"] > 0 and r["gflop"] > 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith(
        "| jaxla Transformer | naive re-encode (bucket 8) | 2 | 5 | 4 |")
