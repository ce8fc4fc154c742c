"""The budget on its own: when a run stops, the time plan and the final reserve."""

from __future__ import annotations

import time

import pytest

from charrnn.config import TrainConfig
from charrnn.training.budget import (
    CALIBRATION_STEPS,
    FINAL_MARGIN,
    VAL_TIME_SHARE,
    Budget,
    learning_rate,
)


class Validation:
    """What the budget asks of a validation, with fixed answers."""

    def __init__(self, val_used=1000, first_chunk=0.0, follow_up=0.0):
        self.val_used = val_used
        self.first_chunk = first_chunk
        self.follow_up = follow_up

    def first_chunk_estimate(self):
        return self.first_chunk

    def follow_up_seconds(self):
        return self.follow_up


def _budget(steps_per_epoch=10, validation=None, **options) -> Budget:
    config = TrainConfig(batch_size=4, seq_len=10, eval_every=10, **options)
    budget = Budget(config, steps_per_epoch)
    budget.watch(validation or Validation())
    return budget


def test_the_step_limits_name_the_reason_to_stop():
    steps = _budget(max_steps=5, epochs=2.0)  # 5 < 2 x 10
    assert steps.limit == 5 and steps.plan == 5
    assert steps.stop_reason(4, time.perf_counter()) is None
    assert steps.stop_reason(5, time.perf_counter()) == "max_steps"
    epochs = _budget(max_steps=50, epochs=1.5)
    assert epochs.limit == 15 and epochs.stop_reason(15, time.perf_counter()) == "epochs"
    default = _budget()  # neither given: DEFAULT_EPOCHS
    assert default.limit is not None and default.finished(default.limit)
    assert not default.finished(default.limit - 1)


def test_a_time_limited_run_has_no_plan_until_it_calibrates():
    budget = _budget(time_limit=100.0)
    budget.begin(0, None)
    assert budget.limit is None and budget.plan is None
    assert not budget.calibrating(CALIBRATION_STEPS - 1)
    assert budget.calibrating(CALIBRATION_STEPS)
    budget.plan = 30
    assert not budget.calibrating(CALIBRATION_STEPS)
    assert budget.stop_reason(29, time.perf_counter()) is None
    assert budget.stop_reason(30, time.perf_counter()) == "time_limit"  # the plan's end


def test_a_run_stops_before_a_step_that_would_leave_no_time_for_the_final_validation():
    budget = _budget(time_limit=10.0, validation=Validation(first_chunk=1.0))
    budget.begin(0, started=time.perf_counter() - 7.0)  # 7 s of the 10 are gone
    budget.step_took = 0.5
    # 7 + 1.5 x 1.0 (final reserve) + 0.5 (the next step) = 9 < 10: go on
    assert budget.stop_reason(3, time.perf_counter()) is None
    budget.step_took = 1.6  # 7 + 1.5 + 1.6 > 10
    assert budget.stop_reason(3, time.perf_counter()) == "time_limit"
    assert budget.out_of_time(time.perf_counter())
    assert not _budget().out_of_time(time.perf_counter())  # no time limit: never


def test_the_final_reserve_estimates_a_validation_before_one_was_timed():
    validation = Validation(val_used=4000, first_chunk=0.01, follow_up=0.3)
    budget = _budget(time_limit=1000.0, validation=validation)
    budget.step_pace = 0.2  # seconds per step of 40 characters: 0.005 s a character
    assert budget.final_reserve() == pytest.approx(FINAL_MARGIN * (4000 * 0.005 + 0.3))
    validation.val_used = 10**9  # at most VAL_TIME_SHARE of the limit, then the save
    assert budget.final_reserve() == pytest.approx(FINAL_MARGIN * (VAL_TIME_SHARE * 1000 + 0.3))


def test_the_final_reserve_grows_when_the_machine_has_slowed_down_since_the_validation():
    budget = _budget(time_limit=1000.0, validation=Validation(first_chunk=0.01))
    budget.eval_time, budget.eval_pace, budget.step_pace = 2.0, 0.1, 0.3
    assert budget.final_reserve() == pytest.approx(FINAL_MARGIN * 2.0 * 3)
    budget.step_pace = 0.05  # faster since: the measured time stands
    assert budget.final_reserve() == pytest.approx(FINAL_MARGIN * 2.0)
    budget.eval_time = 0.001  # never less than the first chunk of a validation
    assert budget.final_reserve() == pytest.approx(FINAL_MARGIN * 0.01)


def test_the_plan_ends_the_decay_when_the_time_does():
    budget = _budget(time_limit=100.0, validation=Validation(first_chunk=0.0))
    budget.eval_time = 1.0  # so the reserve is 1.5 s; a validation every 10 steps
    budget.plan_from_time(step=20, elapsed=10.0, step_time=0.1)
    # (100 - 10 - 1.5) s at 0.1 + 1.0 / 10 s a step, 3% kept back
    assert budget.plan == 20 + int(0.97 * 88.5 / 0.2)
    capped = _budget(time_limit=100.0, max_steps=50, validation=Validation())
    capped.plan_from_time(step=20, elapsed=10.0, step_time=0.1)
    assert capped.plan == 50  # the step limit still holds
    # the schedule decays to its floor at the plan's end, whenever that is
    floor = capped.config.lr * capped.config.lr_min_ratio
    assert learning_rate(budget.plan, budget.config, budget.plan) == pytest.approx(floor)


def test_a_validation_plans_from_the_measured_speed_once_calibrated():
    budget = _budget(time_limit=100.0)
    budget.begin(0, None)
    now = budget.start + 2.0  # 20 steps in 2 s
    budget.validated(20, now, began=time.perf_counter(), calibrating=True)
    assert budget.clock_plan and budget.plan is not None and budget.plan > 20
    assert budget.timing_from is not None and budget.timing_from[0] == 20
    untimed = _budget(max_steps=100)
    untimed.begin(0, None)
    untimed.validated(10, untimed.start + 1.0, began=time.perf_counter(), calibrating=False)
    assert untimed.plan == 100 and not untimed.clock_plan  # the step limit's schedule


def test_between_validations_the_plan_is_remade_only_every_replan_seconds(monkeypatch):
    import charrnn.training.budget as budget_module

    monkeypatch.setattr(budget_module, "REPLAN_SECONDS", 5.0)
    budget = _budget(time_limit=1000.0)
    budget.begin(0, None)
    budget.plan, budget.clock_plan = 100, True
    budget.timing_from = (20, budget.start)
    budget.between_validations(30, budget.start + 4.0)
    assert budget.plan == 100
    budget.between_validations(40, budget.start + 6.0)
    assert budget.plan > 100 and budget.timing_from == (40, budget.start + 6.0)


def test_the_pace_ignores_the_first_step_and_then_averages():
    budget = _budget()
    budget.begin(5, None)
    budget.step_timed(5, time.perf_counter() - 1.0)  # the first step of this invocation
    assert budget.step_took >= 1.0 and budget.step_pace == 0.0
    assert budget.seconds_for(40) == pytest.approx(budget.step_took)  # no pace yet
    budget.step_timed(6, time.perf_counter() - 0.5)
    assert budget.step_pace == pytest.approx(budget.step_took, rel=1e-6)
    first = budget.step_pace
    budget.step_timed(7, time.perf_counter() - 2.0)
    assert budget.step_pace == pytest.approx(0.8 * first + 0.2 * budget.step_took)


def test_the_eta_is_the_earlier_of_the_plan_and_the_time_limit():
    budget = _budget(time_limit=1000.0, max_steps=100)
    budget.begin(0, None)
    budget.plan = 100
    budget.chars_per_sec = 40 * 10.0  # 10 steps a second
    assert budget.eta(50) == pytest.approx(5.0)
    budget.chars_per_sec = 40 * 0.01  # 100 s a step: the time limit comes first
    assert budget.eta(50) == pytest.approx(1000.0, abs=1.0)
    assert _budget().eta(0) is None  # nothing measured and no time limit
