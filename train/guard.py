"""The divergence guard: stop a run at a NaN/Inf or a loss spike, before that state is saved.

The loop checks every step's loss and gradient norm before it evaluates or saves that step's
state, so a checkpoint never holds a diverged state: when the guard trips, the newest checkpoint
is the last good one, and `TrainingDiverged` names it.

A spike is a loss above `spike_factor` times the median loss of the previous `spike_window`
steps that is also more than `SPIKE_MARGIN_NATS` above that median: the ratio catches runaway
losses at any scale (e.g. a loss climbing from 2 to hundreds with a too-large learning rate),
the margin keeps batch-to-batch noise around a near-zero loss (a solved MQAR task) from counting.
The window starts empty at the first step of a run or of a resume.
"""

from __future__ import annotations

import collections
import math
import statistics

SPIKE_MARGIN_NATS = 1.0


class TrainingDiverged(RuntimeError):
    """A step's loss or gradient norm was NaN/Inf, or the loss spiked; the run stopped before
    saving that step's state, and nothing after `last_good` (a step, or None) was saved."""

    def __init__(self, step: int, reason: str, last_good: int | None,
                 last_good_path: str | None = None):
        self.step, self.reason, self.last_good = step, reason, last_good
        where = ("no checkpoint was written" if last_good is None else
                 f"the last good checkpoint is step {last_good}"
                 + (f" ({last_good_path})" if last_good_path else ""))
        super().__init__(f"step {step}: {reason}: training diverged and stopped before saving "
                         f"this state; {where}")


class DivergenceGuard:
    """`check(loss, grad_norm)` of each step in order: None for a good step, else the reason it
    is not (a good step's loss joins the window)."""

    def __init__(self, spike_factor: float, spike_window: int):
        self.spike_factor = spike_factor
        self.window: collections.deque[float] = collections.deque(maxlen=spike_window)

    def check(self, loss: float, grad_norm: float) -> str | None:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"loss {loss}, gradient norm {grad_norm}"
        if self.spike_factor and self.window:
            median = statistics.median(self.window)
            if loss > self.spike_factor * median and loss > median + SPIKE_MARGIN_NATS:
                ratio = loss / median if median > 0 else math.inf
                return (f"loss {loss:.6g} is {ratio:.3g} times the median {median:.6g} of "
                        f"the previous {len(self.window)} steps (--spike_factor "
                        f"{self.spike_factor:g})")
        self.window.append(loss)
        return None
