"""The divergence guard's rule: NaN/Inf always trips; a spike is a loss above spike_factor times
the running median and more than 1 nat above it; noise around a small loss is not a spike."""

import math

import pytest

from train.guard import DivergenceGuard, TrainingDiverged


def _feed(guard, losses):
    """The index of the first loss the guard refuses (None if none)."""
    for i, loss in enumerate(losses):
        if guard.check(float(loss), 1.0) is not None:
            return i
    return None


def test_nan_and_inf_always_trip(rng):
    for factor in (0.0, 3.0):
        guard = DivergenceGuard(factor, 10)
        assert _feed(guard, 2 + rng.random(5)) is None
        assert "loss nan" in guard.check(math.nan, 1.0)
        assert "gradient norm inf" in guard.check(2.0, math.inf)


def test_a_decreasing_noisy_loss_never_trips(rng):
    # Batch noise of up to +-40 %: two losses of a non-increasing trend differ by at most
    # 1.4 / 0.6 = 2.3x, under the factor 3 from the very first step (the window then holds one
    # loss). Wider noise can trip the guard in the first steps, by design: it has to catch a loss
    # that blows up at step 2.
    steps = 2000
    losses = 5.5 * math.e ** (-3 * (1 + rng.random(steps)).cumsum() / steps)  # 5.5 -> ~0.05
    losses *= 1 + 0.2 * rng.standard_normal(steps).clip(-2.0, 2.0)
    assert _feed(DivergenceGuard(3.0, 50), losses) is None


def test_noise_around_a_near_zero_loss_is_not_a_spike(rng):
    # A solved task: the median is ~0.01; one batch at 0.5 is 50x that, but under 1 nat above.
    losses = list(0.01 * (1 + rng.random(60))) + [0.5]
    assert _feed(DivergenceGuard(3.0, 50), losses) is None


def test_a_spike_trips_and_the_reason_says_why(rng):
    history = 2.0 + 0.1 * rng.random(30)
    median = sorted(history[-20:])[10]
    guard = DivergenceGuard(3.0, 20)
    assert _feed(guard, history) is None
    assert guard.check(3.0 * median * 0.99, 1.0) is None  # just under the factor
    why = guard.check(3.0 * median * 1.5, 1.0)
    assert why is not None and "times the median" in why and "previous 20 steps" in why
    assert "--spike_factor 3" in why


def test_factor_zero_turns_the_spike_check_off(rng):
    assert _feed(DivergenceGuard(0.0, 5), [5.5, 1000.0, 1e6, 3.0]) is None


@pytest.mark.parametrize("last_good,path,expected", [
    (None, None, "no checkpoint was written"),
    (4, "runs/x/checkpoints/4", "the last good checkpoint is step 4 (runs/x/checkpoints/4)"),
])
def test_training_diverged_names_the_good_checkpoint(last_good, path, expected):
    exc = TrainingDiverged(7, "loss nan, gradient norm 1.0", last_good, path)
    assert str(exc).startswith("step 7: loss nan, gradient norm 1.0: training diverged")
    assert str(exc).endswith(expected) and exc.step == 7 and exc.last_good == last_good
