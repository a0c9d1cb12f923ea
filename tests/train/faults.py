"""Faults to inject into a training run from tests: a kill, a NaN or a spike in the loss.

`train.loop.train(config, on_step=...)` calls `on_step(step, metrics)` right after each step is
queued; these hooks raise or rewrite the metrics there. The production config has no testing
options.
"""

from __future__ import annotations


class Killed(BaseException):
    """Stands in for a SIGKILL: not an `Exception`, so nothing in the program handles it, and
    the run stops without a final checkpoint, summary or plot."""


def kill_after(step: int):
    """Stop the run as if killed while step `step + 1` runs: everything up to `step` (its
    evaluation and checkpoint included) happened, nothing after it."""

    def on_step(s, metrics):
        if s == step + 1:
            raise Killed(f"killed after step {step}")
        return metrics

    return on_step


def loss_times(step: int, factor: float):
    """Multiply the loss seen by the loop at `step` by `factor` (`float("nan")`: a NaN loss)."""

    def on_step(s, metrics):
        return {**metrics, "loss": metrics["loss"] * factor} if s == step else metrics

    return on_step
