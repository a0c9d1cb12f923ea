"""FLA GLA parity on a GPU (benchmarks/gpu/fla_gla_parity.py); skipped without a GPU or FLA."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "fla_gla_parity.py"


@pytest.mark.gpu
def test_fla_gla_logits_and_greedy_continuations_match():
    if importlib.util.find_spec("fla") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("FLA (fla-core, flash-linear-attention) and torch are not importable")
    spec = importlib.util.spec_from_file_location("fla_gla_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fla_gla_parity"] = module
    spec.loader.exec_module(module)
    assert module.main() == 0
