"""Training progress on stderr: a live rich display on a terminal, plain log lines in a
file or pipe. The loop emits events; this module alone decides how they look."""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from .. import api
from ..config import SampleConfig
from ..training import MIN_VAL_STREAM, Evaluated, Notice, RunStarted, StepDone
from ..training.choose import ModelChosen
from .app import field_default
from .streams import err, warn


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_epochs(epochs: float) -> str:
    """Epochs to two significant digits (0.031, 2.5, 23), whole numbers from 10 on: the done
    line and `info` say the same."""
    if not math.isfinite(epochs) or epochs >= 10:
        return f"{epochs:.0f}"
    return f"{float(f'{epochs:.2g}'):g}"


class Reporter:
    """Renders training events on stderr: a live rich line on a terminal, plain log lines
    (every `log_every` seconds and at each evaluation) when stderr is a file or pipe."""

    def __init__(self, quiet: bool, log_every: float = 10.0):
        self.quiet = quiet
        self.live = err.is_terminal and not quiet
        self.log_every = log_every
        self.last_log = 0.0
        self.val = "-"
        self.progress: Progress | None = None
        self.display: Live | None = None  # the bar, with the latest sample's panel below it
        self.panel: Panel | None = None
        self.task = None
        self.last_step: StepDone | None = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Notice):
            warn(event.message)  # above the live display, which goes on
            return
        if self.quiet:
            return
        if isinstance(event, api.Prepared):
            how = "reused" if event.cached else "built"
            self.line(
                f"corpus: {event.num_files} file(s), {event.num_chars:,} characters; ids {how} "
                f"in {event.seconds:.1f}s ({event.path})"
            )
        if isinstance(event, ModelChosen):
            self.line(model_line(event.choice))
        if isinstance(event, RunStarted):
            self.started(event)
        elif isinstance(event, Evaluated):
            self.evaluated(event)
        elif isinstance(event, StepDone):
            self.step(event)

    def started(self, e: RunStarted) -> None:
        what = "resuming at step" if e.resumed else "training from step"
        limits = []
        if e.limit_steps is not None:
            limits.append(f"{e.limit_steps} steps")
        if e.time_limit is not None:
            limits.append(fmt_time(e.time_limit))
        self.line(
            f"{what} {e.step}: {e.num_params:,} parameters on {_where(e)} ({e.precision}); "
            f"{e.train_chars:,} training / {e.val_chars:,} validation characters"
            f"{_val_used(e)}, vocabulary {e.vocab_size:,} "
            f"({e.input.replace('onehot', 'one-hot')} input); {e.steps_per_epoch} steps per epoch; "
            f"stops at {' or '.join(limits)}"
        )
        if e.best_val is not None:  # the bar shows the val loss the run has, not "-"
            self.val = f"{e.best_val:.4f} ({e.best_val / math.log(2):.3f} bpc)"
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed:>6.0f}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=None, stats="")
            self.panel = Panel(Text("(after the first evaluation)"), title="sample", expand=True)
            self.display = Live(
                Group(self.progress, self.panel),
                console=err,
                refresh_per_second=4,
                redirect_stdout=False,  # stdout is the data channel, never the display
            )
            self.display.start()

    def evaluated(self, e: Evaluated) -> None:
        self.val = f"{e.val_loss:.4f} ({e.val_bpc:.3f} bpc)"
        train = f"train loss {e.train_loss:.4f} | " if e.train_loss is not None else ""
        self.line(
            f"step {e.step} | epoch {e.epoch:.2f} | {train}val loss {e.val_loss:.4f} "
            f"nats/char, {e.val_bpc:.3f} bits/char{' (best)' if e.is_best else ''}"
        )
        if self.last_step is not None and self.progress is not None:
            # The run may end with this evaluation, with no step after it to redraw the
            # bar: refresh its stats now, or it keeps showing the previous val loss.
            self.progress.update(self.task, stats=self.stats(self.last_step))
        if e.sample is None:
            return
        if self.panel is not None:
            self.panel.renderable = Text(e.sample)
            temperature = field_default(SampleConfig, "temperature")
            self.panel.title = f"sample at step {e.step} (temperature {temperature:g})"
        else:  # one line, newlines escaped, so each log message stays one line for grep
            err.print(f"step {e.step} | sample {json.dumps(e.sample, ensure_ascii=False)}")

    def stats(self, e: StepDone) -> str:
        return (
            f"epoch {e.epoch:.2f} | loss {e.loss:.4f} | val {self.val} | "
            f"{e.chars_per_sec:,.0f} chars/s | eta {fmt_time(e.eta)}"
        )

    def step(self, e: StepDone) -> None:
        self.last_step = e
        stats = self.stats(e)
        if self.progress is not None:
            total = e.plan_steps
            self.progress.update(self.task, completed=e.step, total=total, stats=stats)
        elif e.elapsed - self.last_log >= self.log_every:
            self.last_log = e.elapsed
            err.print(f"step {e.step} | {stats} | grad norm {e.grad_norm:.3f} | lr {e.lr:.2e}")

    def line(self, text: str) -> None:
        if self.quiet:
            return
        err.print(text)  # above the live display while there is one

    def stop_live(self) -> None:
        if self.display is not None:
            self.display.stop()
            self.display = None
        self.progress = None
        self.panel = None


def model_line(choice: Any) -> str:
    """The start line's account of the model: what, and why."""
    drop = "" if choice.dropout is None else f", dropout {choice.dropout:g}"
    named = choice.reason.startswith("named")
    how = "" if named else "; --hidden-size/--num-layers to choose yourself"
    what = f"{choice.num_layers} x {choice.hidden_size} {choice.cell.upper()}"
    return f"model: {what}{drop} ({choice.reason}{how})"


def _where(e: RunStarted) -> str:
    if e.processes == 1:
        return e.device
    kind = "GPUs" if e.device.startswith("cuda") else "CPU processes"
    return f"{e.processes} {kind} (DDP; rank 0 on {e.device})"


def _val_used(e: RunStarted) -> str:
    # Segments that cover the whole held-out text (a time-limited run's) predict all but
    # fewer than one character per MIN_VAL_STREAM: that is the whole text, not a bound.
    whole = e.val_chars - 1
    if e.val_used is None or e.val_used >= whole - whole // MIN_VAL_STREAM:
        return ""
    return f" ({e.val_used:,} of them predicted per validation: --val-chars)"
