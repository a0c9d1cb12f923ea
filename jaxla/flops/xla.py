"""XLA's own FLOP count of a JAX function, read defensively.

`jax.jit(f).lower(*args).cost_analysis()` runs XLA's `HloCostAnalysis` on the unoptimised HLO
("lowered"); `.compile().cost_analysis()` runs it on the optimised module ("compiled"). Both count
a dot as 2 x output elements x contracted size (2 FLOPs per multiply-add), 1 FLOP per elementwise
op and per reduction step, and exp/log/logistic/rsqrt/tanh/... as `transcendentals`, not FLOPs.
`analyze` reads both:

* The result may be a dict, a one-element list of dicts (jax < 0.4.38) or None (lowered analysis
  on a PJRT C-API backend such as the CUDA plugin); keys are missing when zero, and some backends
  raise instead. `read_analysis` copes with all of these: missing keys read as 0, an
  unavailable analysis as `Analysis(available=False)`.
* XLA keeps its counts in float32: above 2^24 (~16.8M) they are exact only to float32 rounding
  (relative 6e-8 per op, e.g. a 257^3 matmul reads 33,949,184 for 33,949,186). `XLA_RTOL` bounds
  it for comparisons.
* A custom call (cuBLAS/cuDNN on GPU, a Pallas kernel) is counted as -1 FLOP by generic XLA
  (`Analysis.has_negative`); `Program.custom_calls` says how many the HLO holds, and
  `Program.hlo_while_loops` how many `while` loops, each of which XLA counts once whatever its
  trip count.

Loops, cumulative ops and Pallas calls are not corrected here: `jaxla.flops.report.count` walks
the jaxpr and corrects them, for the FLOP report and the tests that hold XLA against the formulas.
"""


from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Literal

import jax

Stage = Literal["lowered", "compiled"]
STAGES: tuple[str, ...] = ("lowered", "compiled")
# XLA's HloCostAnalysis accumulates float32 values: relative error of a few ulps (2^-24 each).
XLA_RTOL = 2.0**-21


# --------------------------------------------------------------------------------------------
# Reading cost_analysis() results.


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One `cost_analysis()` result, normalised. `available` is False when XLA returned None."""

    flops: float = 0.0
    transcendentals: float = 0.0
    bytes_accessed: float = 0.0
    available: bool = True
    raw: dict | None = None

    @property
    def has_negative(self) -> bool:
        """-1 somewhere: a custom call without a cost model was counted."""
        return self.available and (self.flops < 0 or self.bytes_accessed < 0)


def read_analysis(result: Any) -> Analysis:
    """Normalise what `Lowered/Compiled.cost_analysis()` returned: dict, [dict], [] or None.

    A list holds one dict per program (old jax); their values are summed. Missing keys are 0.
    """
    if result is None:
        return Analysis(available=False)
    if isinstance(result, dict):
        dicts = [result]
    elif isinstance(result, (list, tuple)):
        dicts = [d for d in result if d is not None]
        if not dicts:
            return Analysis(available=False)
    else:
        raise TypeError(f"unexpected cost_analysis() result of type {type(result).__name__}")
    total: dict[str, float] = {}
    for d in dicts:
        if not isinstance(d, dict):
            raise TypeError(f"unexpected cost_analysis() entry of type {type(d).__name__}")
        for key, value in d.items():
            total[key] = total.get(key, 0.0) + float(value)
    return Analysis(
        flops=total.get("flops", 0.0),
        transcendentals=total.get("transcendentals", 0.0),
        bytes_accessed=total.get("bytes accessed", 0.0),
        raw=total,
    )


def _safe_cost_analysis(stage_obj) -> Any:
    try:
        return stage_obj.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends/versions raise instead of returning None
        return None


_WHILE_RE = re.compile(r"stablehlo\.while|\bwhile\(")
_CUSTOM_CALL_RE = re.compile(r"stablehlo\.custom_call|\bcustom-call\(")


def _hlo_counts(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 0
    return len(_WHILE_RE.findall(text)), len(_CUSTOM_CALL_RE.findall(text))


@dataclasses.dataclass(frozen=True)
class Program:
    """A function lowered (and optionally compiled) once, with both analyses read."""

    lowered: Analysis
    compiled: Analysis | None
    hlo_while_loops: int
    custom_calls: int

    def stage(self, stage: Stage) -> Analysis:
        if stage == "lowered":
            return self.lowered
        if self.compiled is None:
            raise ValueError("this program was not compiled; pass compile=True")
        return self.compiled


def analyze(fn: Callable, *args, compile: bool = True) -> Program:
    """Lower `jax.jit(fn)` on `args` (arrays or `jax.ShapeDtypeStruct`s) and read XLA's analyses.

    Loops, cumulative ops and Pallas calls are NOT corrected here (`jaxla.flops.report.count`).
    """
    lowered = jax.jit(fn).lower(*args)
    lo = read_analysis(_safe_cost_analysis(lowered))
    text = lowered.as_text()
    co = None
    if compile:
        compiled = lowered.compile()
        co = read_analysis(_safe_cost_analysis(compiled))
        try:
            text = compiled.as_text() or text
        except Exception:  # noqa: BLE001 - text is diagnostic only
            pass
    whiles, customs = _hlo_counts(text)
    return Program(lowered=lo, compiled=co, hlo_while_loops=whiles, custom_calls=customs)
