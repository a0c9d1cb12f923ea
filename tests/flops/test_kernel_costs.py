"""Every Pallas kernel's `pl.CostEstimate` (FLOPs, bytes) against `jaxla.flops.kernels`.

The estimates are what the FLOP walker (`jaxla.flops.report.count`) puts in place of XLA's count
of a `pallas_call`, and what XLA's scheduler reads; the formulas derive the same FLOPs and HBM
bytes from each kernel's algorithm (conventions in `jaxla/flops/kernels.py`). Both must agree to
TOLERANCE (relative), for the forward and the backward of every op, at the GPU benchmark shapes
(bf16) and at float32 shapes with V tiles and T not a multiple of a chunk. Transcendentals are
not compared. The programs are traced abstractly: no kernel runs.
"""

import pytest

from jaxla.flops.report import kernel_costs

TOLERANCE = 0.01

CASES = kernel_costs.benchmark_cases() + kernel_costs.other_cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.size.replace(' ', '-')}" for c in CASES])
def test_estimates_match_the_formulas(case):
    got, want = case.measure(), case.formula()
    assert sorted(got) == sorted(want), "kernels without a formula, or formulas without a kernel"
    for name, estimate in got.items():
        assert estimate is not None, f"{name} declares no pl.CostEstimate"
        for field, value, formula in (("flops", estimate.flops, want[name].flops),
                                      ("bytes", estimate.bytes_accessed, want[name].bytes)):
            err = abs(value - formula) / formula
            assert err <= TOLERANCE, (f"{name} {field}: estimate {value:.6g}, formula "
                                      f"{formula:.6g} (off by {err:.2%})")
