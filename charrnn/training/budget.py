"""When a run stops: steps, epochs and wall time; the time plan; the learning-rate schedule.

The loop asks `Budget.stop_reason()` before every step and never sees a limit itself.
Without --time-limit the schedule's length is the step limit. With it, the run measures
its speed, then plans the decay to end when the time does (re-planned as the speed
changes), keeping back enough time for a final validation and save.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from ..config import DEFAULT_EPOCHS, TrainConfig

# A time-limited run measures this many steps, then plans its learning-rate decay to end
# when the time does; it re-plans from the measured speed at every evaluation and at least
# every REPLAN_SECONDS.
CALIBRATION_STEPS = 20
REPLAN_SECONDS = 10.0
# With --time-limit, one validation of a big held-out text (beyond --val-chars) takes at
# most this share of the limit: its segments are shortened at the first validation if
# needed, so that a busy or slow machine still spends its time on training steps.
VAL_TIME_SHARE = 0.05
# A time-limited run stops training this many times the last validation's duration (its
# save included) before the limit, so the final validation and save fit even when the
# machine has slowed down since: a run that ends without one leaves best.pt behind last.pt.
FINAL_MARGIN = 1.5


def learning_rate(step: int, config: TrainConfig, plan_steps: int | None) -> float:
    """Linear warm-up, then cosine (or linear) decay to lr * lr_min_ratio at `plan_steps`.

    It depends only on the step and the run's planned length, so a resumed run follows
    exactly the curve of one that was never stopped.
    """
    peak = config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if plan_steps is None:
        return peak
    span = max(1, plan_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = peak * config.lr_min_ratio
    if config.lr_schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def limit_steps(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """The step count --max-steps and --epochs allow (None: only a time limit is set)."""
    limits = []
    if config.max_steps is not None:
        limits.append(config.max_steps)
    epochs = config.epochs
    if epochs is None and config.max_steps is None and config.time_limit is None:
        epochs = DEFAULT_EPOCHS
    if epochs is not None:
        limits.append(max(1, math.ceil(epochs * steps_per_epoch)))
    return min(limits) if limits else None


class ValidationCost(Protocol):
    """What the budget needs to know of a validation to keep time for the final one."""

    val_used: int  # held-out characters a validation predicts

    def first_chunk_estimate(self) -> float: ...

    def follow_up_seconds(self) -> float: ...  # the save and sample after the scoring


class Budget:
    """The run's limits, its measured speed, and the plan (the schedule's length) made
    from them. Times are time.perf_counter() values."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.config = config
        self.chars_per_step = config.batch_size * config.seq_len
        self.limit = limit_steps(config, steps_per_epoch)
        self.plan: int | None = self.limit if config.time_limit is None else None
        self.clock_plan = False  # True once this invocation planned from measured speed
        self.validation: ValidationCost | None = None  # set by watch()
        self.start = 0.0
        self.deadline: float | None = None  # when --time-limit ends
        self.start_step = 0
        self.step_took = 0.0  # seconds the last training step took
        self.step_pace = 0.0  # the recent steps' seconds (a moving average)
        self.eval_pace = 0.0  # step_pace when the last validation was timed
        self.eval_time = 0.0  # seconds the last validation took, its save included
        self.timing_from: tuple[int, float] | None = None  # (step, time) speed is timed from
        self.rate_mark = (0, 0.0)
        self.chars_per_sec = 0.0

    def watch(self, validation: ValidationCost) -> None:
        self.validation = validation

    def finished(self, step: int) -> bool:
        """A resumed run that already reached its step limit: there is nothing to train."""
        return self.limit is not None and step >= self.limit

    def begin(self, step: int, started: float | None) -> None:
        # With `started` (the command's own start), preparing the corpus counts against
        # --time-limit too: the limit is the whole invocation's.
        self.start = started if started is not None else time.perf_counter()
        time_limit = self.config.time_limit
        self.deadline = None if time_limit is None else self.start + time_limit
        self.start_step = step
        self.rate_mark = (step, self.start)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stop_reason(self, step: int, now: float) -> str | None:
        """Why to stop before this step: "max_steps", "epochs", "time_limit", or None."""
        if self.limit is not None and step >= self.limit:
            return "max_steps" if self.config.max_steps == self.limit else "epochs"
        if self.config.time_limit is not None and (
            (self.plan is not None and step >= self.plan)
            # Stop before a step that would end past the limit (a slow machine's steps
            # can take seconds).
            or self.out_of_time(now)
        ):
            return "time_limit"
        return None

    def out_of_time(self, now: float) -> bool:
        """No time left for another step and the final validation after it."""
        if self.config.time_limit is None:
            return False
        return now - self.start + self.final_reserve() + self.step_took >= self.config.time_limit

    def step_timed(self, step: int, began: float) -> None:
        """The step numbered `step` (before counting it) began at `began` and is done."""
        self.step_took = time.perf_counter() - began
        if step > self.start_step:  # the first step's one-off costs would mislead
            pace = self.step_pace or self.step_took
            self.step_pace = 0.8 * pace + 0.2 * self.step_took

    def counted(self, step: int, now: float) -> None:
        """`step` steps are done, at `now`: the speed shown and the timing's start."""
        if step - self.start_step == 3:
            self.timing_from = (step, now)  # skip the first steps' one-off costs
        mark_step, mark_time = self.rate_mark
        if now - mark_time >= 1.0:
            self.chars_per_sec = (step - mark_step) * self.chars_per_step / (now - mark_time)
            self.rate_mark = (step, now)
        elif self.chars_per_sec == 0.0 and now > self.start:
            done = step - self.start_step
            self.chars_per_sec = done * self.chars_per_step / (now - self.start)

    def calibrating(self, step: int) -> bool:
        """Time to make the first plan: the calibration steps are done."""
        return self.plan is None and step >= self.start_step + CALIBRATION_STEPS

    def validated(self, step: int, now: float, began: float, calibrating: bool) -> None:
        """A validation that began at `began` (training stopped at `now`) is done."""
        mark_step, mark_time = self.timing_from or (self.start_step, self.start)
        step_time = (now - mark_time) / max(1, step - mark_step)
        self.eval_time = time.perf_counter() - began
        self.eval_pace = self.step_pace
        if self.config.time_limit is not None and (calibrating or self.clock_plan):
            # Re-planned at every evaluation, so the decay still ends with the time limit
            # when the machine gets slower or faster part-way.
            self.plan_from_time(step, self.elapsed(), step_time)
            self.clock_plan = True
        self.timing_from = (step, time.perf_counter())

    def between_validations(self, step: int, now: float) -> None:
        # Between evaluations too (a short run may have none after the first): a plan made
        # from the first, slower steps would end the run early.
        if not (self.clock_plan and self.timing_from):
            return
        mark_step, mark_time = self.timing_from
        if now - mark_time >= REPLAN_SECONDS:
            step_time = (now - mark_time) / max(1, step - mark_step)
            self.plan_from_time(step, now - self.start, step_time)
            self.timing_from = (step, now)

    def plan_from_time(self, step: int, elapsed: float, step_time: float) -> None:
        """Fix the schedule's length so the decay ends when the time limit does."""
        remaining = self.config.time_limit - elapsed - self.final_reserve()
        per_step = step_time + self.eval_time / self.config.eval_every
        steps = max(1, int(0.97 * remaining / per_step))
        self.plan = step + steps if self.limit is None else min(self.limit, step + steps)

    def final_reserve(self) -> float:
        """Seconds to keep for the final validation and save. Before any validation was
        timed, an estimate: as many seconds per character as a training step, for the
        characters a validation predicts (at most VAL_TIME_SHARE of the limit)."""
        validation = self.validation
        eval_time = self.eval_time
        if eval_time <= 0.0:
            per_char = self.step_pace / self.chars_per_step
            eval_time = min(per_char * validation.val_used, self.validation_share())
            eval_time += validation.follow_up_seconds()
        elif self.eval_pace > 0.0:  # the machine slowed down since: so will the validation
            eval_time *= max(1.0, self.step_pace / self.eval_pace)
        # At least the first chunk, which a validation begins only if it can end in time.
        return FINAL_MARGIN * max(eval_time, validation.first_chunk_estimate())

    def validation_share(self) -> float:
        """The seconds one validation may take of --time-limit (VAL_TIME_SHARE)."""
        return VAL_TIME_SHARE * self.config.time_limit

    def seconds_for(self, chars: int) -> float:
        """Seconds `chars` predictions take at the last training steps' speed."""
        return (self.step_pace or self.step_took) * chars / self.chars_per_step

    def eta(self, step: int) -> float | None:
        elapsed = self.elapsed()
        ends = []
        target = self.plan if self.plan is not None else self.limit
        steps_per_sec = self.chars_per_sec / self.chars_per_step
        if target is not None and steps_per_sec > 0:
            ends.append(max(0, target - step) / steps_per_sec)
        if self.config.time_limit is not None:
            ends.append(max(0.0, self.config.time_limit - elapsed))
        return min(ends) if ends else None
