"""Validation: when to validate, what (bounded segments, fitted once to --time-limit),
keep-best, the evaluation sample, and the save that follows every validation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..config import SampleConfig, TrainConfig
from ..corpus import Corpus
from ..rundir import RunDir
from ..sample import generate
from .average import validated
from .budget import Budget, learning_rate
from .evaluation import LN2, evaluate, evaluate_segments, val_segments, val_streams
from .events import Evaluated, Notice, StopRequest
from .state import RunState

# Steps between the training-loss lines of metrics.jsonl: enough points for a curve
# between evaluations (eval_every is 1000 by default), at the cost of one short append.
# Written only where evaluations are at least 4 such spans apart: closer evaluations draw
# the curve with their own train_loss.
TRAIN_LOSS_EVERY = 25


class Evaluator:
    """Validates the model every eval_every steps (and when a time-limited run calibrates),
    rank 0 alone; records each validation in the history and metrics.jsonl."""

    def __init__(
        self,
        config: TrainConfig,
        corpus: Corpus,
        run_dir: RunDir,
        state: RunState,
        budget: Budget,
        stop: StopRequest,
        emit: Callable[[Any], None],
    ):
        self.config = config
        self.corpus = corpus
        self.run_dir = run_dir
        self.state = state
        self.progress = state.progress
        self.budget = budget
        self.stop = stop
        self.emit = emit
        # Validation costs bounded time on any corpus: at most val_chars predictions.
        # With --time-limit, always as segments: the first validation is fitted to the time.
        self.val_rows = val_segments(corpus.val, config.val_chars, config.time_limit is not None)
        self.val_used = (
            len(corpus.val) - 1
            if self.val_rows is None
            else self.val_rows.shape[0] * (self.val_rows.shape[1] - 1)
        )
        self.val_fitted = False  # the validation size was fitted to --time-limit
        self.sample_took = 0.0  # seconds the last evaluation sample took
        # Training loss summed over the windows since the last evaluation (train_loss).
        self.loss_sum = 0.0
        self.loss_count = 0
        self.evaluated_at = -1
        # The same over the last TRAIN_LOSS_EVERY steps, for metrics.jsonl's curve lines.
        self.window_sum = 0.0
        self.window_count = 0
        self.train_logged_to = -1  # lines up to this step are in metrics.jsonl already

    def resumed(self) -> None:
        # A run resumed right after an evaluation has that step's loss already.
        history = self.progress.history
        self.evaluated_at = history[-1]["step"] if history else -1
        if self.state.parts.world.is_main:  # the steps a killed run logged past its last.pt
            self.train_logged_to = self.run_dir.last_train_loss_step()

    def should_validate(self, step: int, calibrating: bool) -> bool:
        timed = self.config.time_limit is not None and calibrating
        return step % self.config.eval_every == 0 or timed

    def needs_final(self) -> bool:
        """The last step was not validated: a run always ends with a validated step."""
        return self.evaluated_at != self.progress.step

    def train_loss(self, loss: float) -> None:
        """The loss of the step just done (a float already: recording it costs no sync)."""
        self.loss_sum += loss
        self.loss_count += 1
        self.window_sum += loss
        self.window_count += 1
        step = self.progress.step
        if step % TRAIN_LOSS_EVERY or self.config.eval_every < 4 * TRAIN_LOSS_EVERY:
            return
        if step > self.train_logged_to and self.state.parts.world.is_main:
            mean = self.window_sum / self.window_count
            self.run_dir.append_train_loss({"step": step, "train_loss": mean})
            self.train_logged_to = step
        self.window_sum, self.window_count = 0.0, 0

    def validate(self, elapsed: float, final: bool = False) -> bool:
        """Score, keep-best, save. False when it was skipped for lack of time (last.pt was
        saved without it) or interrupted (the caller saves and stops). On every process
        but rank 0, True at once: only rank 0 scores and saves."""
        self.evaluated_at = self.progress.step
        if not self.state.parts.world.is_main:
            return True
        # A validation that would run past --time-limit is abandoned, so the limit holds
        # however slow the machine is (last.pt is saved without it). Its first chunk is not
        # begun when, at the speed of the last training step, it could not end in time.
        # Except the final one of a run that has no best.pt at all: `charrnn sample` needs
        # one, so it scores at least a first chunk, past the limit if need be.
        deadline = self.budget.deadline
        if (
            deadline is not None
            and not (final and self.progress.best_val is None and self.progress.step > 0)
            and time.perf_counter() + self.first_chunk_estimate() > deadline
        ):
            return self._skip_validation()
        with validated(self.state.parts.average):
            scored = self._score(final)
        if scored is None and not self.stop:  # out of time: save without a validation
            return self._skip_validation()
        if scored is None:  # interrupted mid-way: the caller saves and stops
            return False
        self._keep(*scored, elapsed)
        return True

    def _keep(self, val: float, used: int, elapsed: float) -> None:
        """Record a validation's loss, save (best.pt too if it is the best) and say so."""
        p = self.progress
        is_best = p.best_val is None or val < p.best_val
        if is_best:
            p.best_val = val
        p.last_val = val
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        t0 = time.perf_counter()
        with validated(self.state.parts.average):
            sample = self.draw_sample()
        self.sample_took = time.perf_counter() - t0
        epoch = p.fractional_epoch(self.state.parts.streams.windows_per_epoch)
        record = {
            "step": p.step,
            "epoch": round(epoch, 4),
            "val_loss": val,
            "val_bpc": val / LN2,
            "val_chars": used,
            "lr": learning_rate(max(0, p.step - 1), self.config, self.budget.plan),
            "elapsed": round(elapsed, 3),
            "time": time.time(),
        }
        if train_loss is not None:
            record["train_loss"] = train_loss
        if sample is not None:
            record["sample"] = sample
        p.history.append(record)
        self.state.save(also_best=is_best)
        self.run_dir.append_metrics(record)
        self.emit(
            Evaluated(
                p.step,
                epoch,
                val,
                val / LN2,
                is_best,
                elapsed,
                train_loss=train_loss,
                sample=sample,
            )
        )

    def _score(self, final: bool) -> tuple[float, int] | None:
        """(validation loss, held-out characters predicted), or None if stopped or out of
        time. The final validation of a time-limited run scores what the time left allows
        (the first columns of every segment) rather than nothing."""
        parts = self.state.parts
        if self.val_rows is None:
            val = evaluate(
                parts.model,
                self.corpus.val,
                parts.device,
                num_streams=val_streams(len(self.corpus.val)),
                stop=self.stop,
                deadline=self.budget.deadline,
            )
            return None if val is None else (val, self.val_used)
        deadline, budget = self.budget.deadline, None
        if self.config.time_limit is not None and not self.val_fitted:
            budget = self.budget.validation_share()
        if final and deadline is not None:
            left = max(0.0, deadline - time.perf_counter() - self.follow_up_seconds())
            deadline, budget = None, left if budget is None else min(budget, left)
        scored = evaluate_segments(
            parts.model, self.val_rows, parts.device, self.stop, deadline, budget
        )
        if scored is None:
            return None
        val, cols = scored
        used = self.val_rows.shape[0] * cols
        if final and used < self.val_used:
            self.emit(
                Notice(
                    f"step {self.progress.step}: the final validation predicted {used:,} of "
                    f"the {self.val_used:,} held-out characters, all that the time left allowed"
                )
            )
        elif not self.val_fitted:
            self._fit_validation(cols)
        self.val_fitted = True
        return val, used

    def _fit_validation(self, cols: int) -> None:
        """Keep the columns the first time-limited validation had time for, so every later
        validation of this invocation scores the same characters in the same time."""
        if cols >= self.val_rows.shape[1] - 1:
            return
        before = self.val_used
        self.val_rows = self.val_rows[:, : cols + 1]
        self.val_used = self.val_rows.shape[0] * cols
        share = self.budget.validation_share() / self.config.time_limit
        self.emit(
            Notice(
                f"validating on {self.val_used:,} held-out characters instead of {before:,}: "
                f"here a validation of {before:,} takes more than "
                f"{share:.0%} of --time-limit"
            )
        )

    def _skip_validation(self) -> bool:
        """Out of time: save last.pt unvalidated, and say which file holds the newest model
        (`charrnn sample` takes best.pt unless told otherwise)."""
        p = self.progress
        best = [r["step"] for r in p.history if r.get("val_loss") == p.best_val]
        older = f"best.pt is from step {best[-1]}" if best else "there is no best.pt yet"
        self.emit(
            Notice(
                f"step {p.step}: out of time, validation skipped; the newest model is "
                f"{self.run_dir.last} (not validated); {older}"
            )
        )
        self.state.save(also_best=False)
        return False

    def draw_sample(self) -> str | None:
        """A short sample from the same seed at every evaluation, as min-char-rnn prints
        while it trains: the same random numbers each time, so the differences between
        two samples come from the weights alone."""
        if self.config.sample_length == 0:
            return None
        vocab = self.corpus.vocab
        seed = vocab.chars[int(self.corpus.train[0])]
        # numpy takes seeds from 0 to 2**64 - 1; torch's (the run's) may be negative.
        seed_bits = self.config.random_seed % 2**64
        config = SampleConfig(length=self.config.sample_length, random_seed=seed_bits)
        model, device = self.state.parts.model, self.state.parts.device
        was_training = model.training
        try:
            # numpy draws only: the torch RNG (dropout) is untouched, so resuming stays exact.
            return "".join(text for _, text in generate(model, vocab, seed, config, device))
        finally:
            model.train(was_training)

    def first_chunk_estimate(self) -> float:
        """Seconds the first chunk of a validation may take: as many seconds per character
        as the last training step (forward only is cheaper; fp32 scoring is dearer)."""
        if self.val_rows is not None:
            chars = self.val_rows.shape[0] * min(256, self.val_rows.shape[1] - 1)
        else:
            chars = val_streams(len(self.corpus.val)) * 1024
        return self.budget.seconds_for(chars)

    def follow_up_seconds(self) -> float:
        """What follows the scoring: the save and the evaluation sample."""
        return self.state.save_took + self.sample_took
