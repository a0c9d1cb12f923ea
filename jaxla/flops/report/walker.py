"""XLA's FLOP count of a JAX function, corrected where XLA is wrong: the jaxpr walker.

`count_all(fn, *args)` reads XLA's lowered and compiled analyses (`jaxla.flops.xla.analyze`)
and corrects them by walking `jax.make_jaxpr(fn)(*args)`:

* A `while` loop (`lax.scan`, `fori_loop`, `while_loop`) is counted ONCE, whatever its trip count.
  Every `scan` in the jaxpr (its trip count is the static `length`) is corrected:
  `loops="multiply"` (default) replaces XLA's count of the loop by `length x` the corrected count
  of its body measured on its own; `loops="unroll"` rewrites every scan to `unroll=length` and
  counts the straight-line program. `while_loop`s with a data-dependent trip count cannot be
  corrected: they are reported in `Count.warnings`. The number of `while` ops in the HLO text is
  reported too, so loops that exist only in the HLO (e.g. a Pallas interpret-mode grid) show up.
* `cumsum` (and cumprod/cummax/cummin) lowers to a reduce-window or a log-depth scan whose count
  has nothing to do with the n - 1 additions a cumulative sum needs (1M x 1023 FLOPs lowered for a
  cumsum over 1024 on CPU). With `cumulative="serial"` (default) each is replaced by its serial
  count, `elements x (n - 1) / n`.
* A custom call (cuBLAS/cuDNN on GPU, a Pallas kernel) is counted as -1 FLOP by generic XLA.
  `custom_calls` reports how many the HLO holds; a `pallas_call` that declares `pl.CostEstimate`
  is replaced by its estimate (held against `jaxla.flops.kernels` by
  tests/flops/test_kernel_costs.py), one that does not is reported in `warnings`.

The corrections rely on XLA's lowered count being additive over HLO instructions (it is: the
unoptimised module has no fusion), so `count of f = raw(f) - raw(eqn alone) + true(eqn)` for each
corrected equation. Compiled counts are not strictly additive (fusion can duplicate work, dead code
is removed), so the same correction applied to them is an approximation; lowered is the primary
number everywhere in jaxla.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.extend as jex
import numpy as np

from jaxla.flops.xla import STAGES, Analysis, Program, Stage, analyze

CUMULATIVE_PRIMITIVES = ("cumsum", "cumprod", "cummax", "cummin")


# --------------------------------------------------------------------------------------------
# Jaxpr walking: loops, cumulative ops, Pallas calls.


@dataclasses.dataclass(frozen=True)
class Loop:
    """A loop found in the jaxpr. `body_flops` is the corrected count of one iteration."""

    primitive: str
    trip_count: int | None
    raw_flops: float  # what XLA counted for the whole loop (one iteration + counter)
    body_flops: float  # one iteration, itself corrected
    multiplicity: int  # iterations of enclosing loops (1 at top level)

    @property
    def true_flops(self) -> float:
        return self.body_flops * (self.trip_count or 0)


@dataclasses.dataclass(frozen=True)
class Adjustment:
    """An equation whose XLA count was replaced: `raw` (XLA) -> `true`, times `multiplicity`."""

    primitive: str
    raw_flops: float
    true_flops: float
    raw_transcendentals: float
    true_transcendentals: float
    multiplicity: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Count:
    """XLA's FLOP count of a function at one stage, corrected for loops and cumulative ops.

    `flops`/`transcendentals` are None when XLA's analysis is unavailable (lowered on GPU).
    `raw` is XLA's number as returned. `loops` lists every corrected loop (`raw_flops` is what XLA
    counted for it, `true_flops` what it costs), `adjustments` every other replaced equation.
    """

    stage: str
    raw: Analysis
    flops: float | None
    transcendentals: float | None
    loops: tuple[Loop, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    hlo_while_loops: int = 0
    custom_calls: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def loop_undercount(self) -> float:
        """FLOPs XLA missed because it counted loops once (top-level loops, corrected)."""
        return sum(lp.true_flops - lp.raw_flops for lp in self.loops if lp.multiplicity == 1)

    @property
    def corrected(self) -> bool:
        return bool(self.loops or self.adjustments)


def _closed(j) -> jex.core.ClosedJaxpr:
    if isinstance(j, jex.core.ClosedJaxpr):
        return j
    return jex.core.ClosedJaxpr(j, [])


def _sub_jaxprs(params: dict) -> list[jex.core.ClosedJaxpr]:
    found = []
    for value in params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, (jex.core.Jaxpr, jex.core.ClosedJaxpr)):
                found.append(_closed(v))
    return found


def _specs(avals) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]


def _eqn_program(eqn, compile: bool) -> Program:
    """Lower one equation on its own (literal operands become constants)."""
    literals = {i: v.val for i, v in enumerate(eqn.invars) if isinstance(v, jex.core.Literal)}
    var_positions = [i for i in range(len(eqn.invars)) if i not in literals]

    def fn(*xs):
        args = [None] * len(eqn.invars)
        for i, val in literals.items():
            args[i] = val
        for i, x in zip(var_positions, xs, strict=True):
            args[i] = x
        return eqn.primitive.bind(*args, **eqn.params)

    return analyze(fn, *_specs(eqn.invars[i].aval for i in var_positions), compile=compile)


def _jaxpr_program(closed: jex.core.ClosedJaxpr, compile: bool) -> Program:
    return analyze(jex.core.jaxpr_as_fun(closed), *_specs(closed.in_avals), compile=compile)


def _cumulative_true(eqn) -> float:
    """Serial count of a cumulative op: n - 1 combines per n elements along the axis."""
    aval = eqn.invars[0].aval
    n = aval.shape[eqn.params["axis"]]
    size = int(np.prod(aval.shape, dtype=np.int64))
    return float(size - size // n) if n else 0.0


def _contains_special(closed: jex.core.ClosedJaxpr) -> bool:
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while", "pallas_call", *CUMULATIVE_PRIMITIVES):
            return True
        if any(_contains_special(sub) for sub in _sub_jaxprs(eqn.params)):
            return True
    return False


@dataclasses.dataclass
class _Walk:
    """Accumulates the corrections of one jaxpr for all requested stages."""

    stages: tuple[str, ...]
    loops_mode: str
    cumulative: str
    compile: bool
    delta: dict = dataclasses.field(default_factory=dict)  # stage -> [flops, trans]
    loops: dict = dataclasses.field(default_factory=dict)  # stage -> [Loop]
    adjustments: dict = dataclasses.field(default_factory=dict)
    warnings: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for s in self.stages:
            self.delta[s] = [0.0, 0.0]
            self.loops[s] = []
            self.adjustments[s] = []

    def add(self, stage, flops, trans):
        self.delta[stage][0] += flops
        self.delta[stage][1] += trans


def _walk(jaxpr: jex.core.Jaxpr, walk: _Walk, multiplicity: int) -> None:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            body = _closed(eqn.params["jaxpr"])
            length = int(eqn.params["length"])
            if walk.loops_mode == "unroll":
                # The rewritten program already holds `length` copies: correct inside only.
                _walk(body.jaxpr, walk, multiplicity * length)
                continue
            if walk.loops_mode == "ignore":
                continue
            in_place = _eqn_program(eqn, walk.compile)
            body_counts = _count_closed(body, walk.stages, walk.loops_mode, walk.cumulative,
                                        walk.compile)
            for s in walk.stages:
                raw = in_place.stage(s)
                b = body_counts[s]
                walk.loops[s].append(Loop("scan", length, raw.flops, b.flops, multiplicity))
                walk.loops[s].extend(dataclasses.replace(lp, multiplicity=lp.multiplicity * length)
                                     for lp in b.loops)
                walk.adjustments[s].extend(
                    dataclasses.replace(a, multiplicity=a.multiplicity * length)
                    for a in b.adjustments)
                walk.add(s, (length * b.flops - raw.flops) * multiplicity,
                         (length * b.transcendentals - raw.transcendentals) * multiplicity)
            walk.warnings.extend(w for w in body_counts[walk.stages[0]].warnings
                                 if w not in walk.warnings)
        elif name == "while":
            walk.warnings.append(
                "a while_loop with a trip count unknown at trace time is counted once by XLA "
                "and was not corrected")
        elif name in CUMULATIVE_PRIMITIVES and walk.cumulative == "serial":
            prog = _eqn_program(eqn, walk.compile)
            true = _cumulative_true(eqn)
            for s in walk.stages:
                raw = prog.stage(s)
                walk.adjustments[s].append(Adjustment(
                    name, raw.flops, true, raw.transcendentals, 0.0, multiplicity,
                    "cumulative op: XLA counts its reduce-window/scan lowering, not n-1 adds"))
                walk.add(s, (true - raw.flops) * multiplicity, -raw.transcendentals * multiplicity)
        elif name == "pallas_call":
            estimate = eqn.params.get("cost_estimate")
            if estimate is None:
                walk.warnings.append(
                    "pallas_call without pl.CostEstimate: XLA counts one grid step (interpret "
                    "mode) or -1 (custom call); not corrected")
                continue
            prog = _eqn_program(eqn, walk.compile)
            for s in walk.stages:
                raw = prog.stage(s)
                walk.adjustments[s].append(Adjustment(
                    name, raw.flops, float(estimate.flops), raw.transcendentals,
                    float(estimate.transcendentals), multiplicity,
                    "pallas_call: replaced by its declared pl.CostEstimate"))
                walk.add(s, (estimate.flops - raw.flops) * multiplicity,
                         (estimate.transcendentals - raw.transcendentals) * multiplicity)
        elif name == "cond":
            if any(_contains_special(b) for b in _sub_jaxprs(eqn.params)):
                walk.warnings.append(
                    "loops or cumulative ops inside lax.cond branches were not corrected "
                    "(XLA counts the most expensive branch)")
        else:
            for sub in _sub_jaxprs(eqn.params):
                _walk(sub.jaxpr, walk, multiplicity)


def _unroll_jaxpr(jaxpr: jex.core.Jaxpr) -> jex.core.Jaxpr:
    """Every scan (at any depth) rewritten to `unroll=length`: straight-line HLO, no while."""

    def rewrite(value):
        if isinstance(value, jex.core.ClosedJaxpr):
            return jex.core.ClosedJaxpr(_unroll_jaxpr(value.jaxpr), value.consts)
        if isinstance(value, jex.core.Jaxpr):
            return _unroll_jaxpr(value)
        if isinstance(value, tuple):
            return tuple(rewrite(v) for v in value)
        return value

    eqns = []
    for eqn in jaxpr.eqns:
        params = {k: rewrite(v) for k, v in eqn.params.items()}
        if eqn.primitive.name == "scan":
            params["unroll"] = max(int(params["length"]), 1)
        eqns.append(eqn.replace(params=params))
    return jaxpr.replace(eqns=eqns)


def _count_closed(closed, stages, loops_mode, cumulative, compile) -> dict[str, Count]:
    program_jaxpr = closed
    if loops_mode == "unroll":
        program_jaxpr = jex.core.ClosedJaxpr(_unroll_jaxpr(closed.jaxpr), closed.consts)
    prog = _jaxpr_program(program_jaxpr, compile)
    walk = _Walk(tuple(stages), loops_mode, cumulative, compile)
    _walk(closed.jaxpr, walk, 1)
    return _finish(prog, walk)


def _finish(prog: Program, walk: _Walk) -> dict[str, Count]:
    out = {}
    for s in walk.stages:
        raw = prog.stage(s)
        warnings = list(walk.warnings)
        if not raw.available:
            warnings.append(f"{s} cost analysis unavailable on this backend (returned None)")
        if prog.custom_calls:
            warnings.append(f"{prog.custom_calls} custom call(s) in the HLO: generic XLA counts "
                            "each as -1 FLOP")
        if walk.loops_mode == "ignore" and prog.hlo_while_loops:
            warnings.append(f"{prog.hlo_while_loops} while loop(s) counted once (not corrected)")
        flops = raw.flops + walk.delta[s][0] if raw.available else None
        trans = raw.transcendentals + walk.delta[s][1] if raw.available else None
        out[s] = Count(
            stage=s, raw=raw, flops=flops, transcendentals=trans,
            loops=tuple(walk.loops[s]), adjustments=tuple(walk.adjustments[s]),
            hlo_while_loops=prog.hlo_while_loops, custom_calls=prog.custom_calls,
            warnings=tuple(dict.fromkeys(warnings)),
        )
    return out


def count_all(
    fn: Callable,
    *args,
    stages: Sequence[str] = STAGES,
    loops: Literal["multiply", "unroll", "ignore"] = "multiply",
    cumulative: Literal["serial", "xla"] = "serial",
) -> dict[str, Count]:
    """XLA's FLOP count of `fn(*args)` at each stage in `stages`, with loops corrected.

    Args:
      fn: any JAX-traceable function of arrays (close over static arguments).
      args: arrays or `jax.ShapeDtypeStruct`s (nothing is allocated for the latter).
      stages: "lowered" (unoptimised HLO, the primary number) and/or "compiled".
      loops: "multiply" (trip count x the body counted on its own), "unroll" (count the program
        with every scan unrolled; slow to compile for long loops) or "ignore" (XLA as is).
      cumulative: "serial" replaces cumsum & co by n - 1 ops per n elements; "xla" keeps XLA's.

    Returns:
      `{stage: Count}`.
    """
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; choose from {STAGES}")
    if loops not in ("multiply", "unroll", "ignore"):
        raise ValueError(f"loops must be 'multiply', 'unroll' or 'ignore', got {loops!r}")
    if cumulative not in ("serial", "xla"):
        raise ValueError(f"cumulative must be 'serial' or 'xla', got {cumulative!r}")
    closed = jax.make_jaxpr(fn)(*args)
    return _count_closed(closed, tuple(stages), loops, cumulative, "compiled" in stages)


def count(fn: Callable, *args, stage: Stage = "lowered", **kwargs) -> Count:
    """`count_all` for one stage; see there."""
    return count_all(fn, *args, stages=(stage,), **kwargs)[stage]


def xla_flops(fn: Callable, *args, stage: Stage = "lowered", **kwargs) -> float | None:
    """The corrected FLOP count (None when XLA's analysis is unavailable)."""
    return count(fn, *args, stage=stage, **kwargs).flops
