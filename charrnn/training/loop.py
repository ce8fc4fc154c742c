"""The training loop: truncated BPTT over parallel streams, Adam, clipping.

For each window: forward with the state carried from the last window, the loss, backward,
clip, step, detach. The loop asks the budget when to stop, the evaluator when to validate
and the run state to save; it knows no limit, no interval and no rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..config import TrainConfig
from ..device import autocast
from ..distributed import World, is_lost_peer, lost_contact
from ..errors import TrainingError
from ..loss import cross_entropy
from ..model import detach_hidden
from ..threads import ThreadPilot
from .budget import Budget, learning_rate
from .evaluator import Evaluator
from .events import Notice, StepDone, StopRequest
from .prepare import Parts
from .state import RunState

# Consecutive non-finite steps tolerated (each skipped) before the run is stopped.
MAX_BAD_STEPS = 5


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """Scale all gradients together by max_norm / norm when their global L2 norm exceeds
    max_norm (0 = never): the update keeps its direction, only an exploding step is
    shortened. Returns the norm before clipping."""
    clip = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, clip))


@dataclass
class Run:
    """One training invocation: what it trains with and the small objects that decide."""

    config: TrainConfig
    parts: Parts
    state: RunState
    budget: Budget
    evaluator: Evaluator
    stop: StopRequest
    emit: Callable[[Any], None]
    pilot: ThreadPilot | None = None  # chooses the CPU thread count by timing the steps


def train_loop(run: Run) -> tuple[str | None, str | None]:
    """Train until the budget or a signal says stop: (the signal, the budget's reason)."""
    cfg, parts, p, budget = run.config, run.parts, run.state.progress, run.budget
    optimizer, world, bad_steps = parts.optimizer, parts.world, 0
    while True:
        began = time.perf_counter()
        signal, decision = agree(run, budget.stop_reason(p.step, began))
        if signal or decision:
            return signal, decision
        if p.window >= parts.streams.windows_per_epoch:
            p.epoch, p.window = p.epoch + 1, 0
            p.hidden = None  # each epoch starts the streams from a zero state
        x, y = parts.streams.window(p.window)  # (B, T) inputs, (B, T) targets
        if run.pilot is not None:
            run.pilot.before_step()
        lr = learning_rate(p.step, cfg, budget.plan)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(parts.device, parts.precision):
            logits, hidden = parts.net(x, p.hidden)  # (B, T, V)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        _backward(loss, world)  # under DDP, this also averages the gradients of all processes
        norm = clip_gradients(parts.params, cfg.grad_clip)
        loss_value = world.mean(loss.detach()).item()  # the whole batch's loss
        ok = math.isfinite(loss_value) and math.isfinite(norm)
        if ok:
            optimizer.step()
            if parts.average is not None:
                parts.average.update()
            # Keep the state for the next window but cut the graph here: that is the
            # "truncated" in truncated BPTT.
            p.hidden = detach_hidden(hidden, parts.model.head.weight.dtype)
        else:
            p.hidden = None  # a non-finite state would poison every later window
        budget.step_timed(p.step, began)
        if run.pilot is not None:
            run.pilot.after_step(budget.step_took)
        p.step += 1
        p.window += 1
        bad_steps = _count_bad(run, ok, loss_value, norm, bad_steps)
        now = time.perf_counter()
        budget.counted(p.step, now)
        calibrating = budget.calibrating(p.step)
        if run.evaluator.should_validate(p.step, calibrating):
            if not _validate(run, now, calibrating):
                continue  # skipped for lack of time, or interrupted: no StepDone
        else:
            budget.between_validations(p.step, now)
        run.emit(_step_done(run, loss_value, norm, lr))


def _backward(loss: torch.Tensor, world: World) -> None:
    try:
        loss.backward()
    except RuntimeError as e:
        if world.launched and is_lost_peer(e):
            raise lost_contact(world, e) from None
        raise


def _count_bad(run: Run, ok: bool, loss: float, norm: float, bad_steps: int) -> int:
    """Consecutive non-finite steps: each is skipped; MAX_BAD_STEPS in a row stop the run."""
    step = run.state.progress.step
    if ok:
        run.evaluator.train_loss(loss)
        return 0
    bad_steps += 1
    run.emit(
        Notice(
            f"step {step}: non-finite loss or gradient ({loss:.4g}, norm {norm:.4g}); step skipped"
        )
    )
    if bad_steps >= MAX_BAD_STEPS:
        raise TrainingError(
            f"{bad_steps} steps in a row had a non-finite loss or gradient (by step "
            f"{step}); stopped without saving: lower --lr (now {run.config.lr:g})"
        )
    return bad_steps


def _validate(run: Run, now: float, calibrating: bool) -> bool:
    """Validate at the step that ended at `now`; False if skipped or interrupted."""
    began = time.perf_counter()
    run.state.collect()
    # The last validation before the limit, if the time left allows no other.
    last = run.budget.out_of_time(now)
    if not run.evaluator.validate(now - run.budget.start, final=last):
        return False
    run.budget.validated(run.state.progress.step, now, began, calibrating)
    return True


def agree(run: Run, decision: str | None) -> tuple[str | None, str | None]:
    """(why to stop at once: a signal seen by any process, or None; rank 0's decision),
    with rank 0's plan: what every process acts on. Alone, the signal as seen now."""
    # Under torchrun every process stops at the same step, by rank 0's clock; a signal
    # that lands after this point is acted on at the next step.
    signal, decision, plan = run.parts.world.agree_step(run.stop.reason, decision, run.budget.plan)
    run.budget.plan = plan
    if signal is not None and not run.stop:
        run.stop.set(signal)
    return signal, decision


def _step_done(run: Run, loss: float, norm: float, lr: float) -> StepDone:
    p, budget = run.state.progress, run.budget
    return StepDone(
        step=p.step,
        epoch=p.fractional_epoch(run.parts.streams.windows_per_epoch),
        loss=loss,
        grad_norm=norm,
        lr=lr,
        chars_per_sec=budget.chars_per_sec,
        elapsed=budget.elapsed(),
        eta=budget.eta(p.step),
        plan_steps=budget.plan,
    )
