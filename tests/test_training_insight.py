"""What training shows while it runs: train_loss and a fixed-seed sample at each
evaluation, in metrics.jsonl and on stderr, and a live display that follows the latest
validation loss."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import pytest
from conftest import PATTERN, run_cli, tiny_run
from rich.console import Console
from typer.testing import CliRunner

import charrnn.cli.progress
import charrnn.cli.streams
from charrnn.cli import app
from charrnn.cli.progress import Reporter
from charrnn.training import Evaluated, Notice, RunStarted, StepDone

runner = CliRunner()


def invoke(*args: str) -> SimpleNamespace:
    """`charrnn ARGS` in this process, with run_cli's result fields."""
    result = runner.invoke(app, list(args))
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def _started() -> RunStarted:
    return RunStarted(0, False, 1000, "cpu", "fp32", 10, 700, None, 1000, 100, 20)


def _step(step: int, loss: float) -> StepDone:
    return StepDone(step, step / 10, loss, 1.0, 1e-3, 1000.0, 1.0, 1.0, 700)


def test_live_display_shows_the_latest_validation_loss(monkeypatch):
    # Seen before the fix: a run ending with an evaluation kept `val 3.3932` on the bar.
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(charrnn.cli.progress, "err", console)
    reporter = Reporter(quiet=False)
    assert reporter.live
    reporter(_started())
    reporter(_step(20, 3.5))
    reporter(Evaluated(20, 2.0, 3.3932, 4.895, True, 1.0, train_loss=3.6, sample="first"))
    reporter(_step(680, 2.0))
    reporter(Evaluated(680, 68.0, 1.9550, 2.820, True, 9.0, train_loss=2.1, sample="Second"))
    reporter.stop_live()
    out = screen.getvalue()
    shown = re.findall(r"\| val (\d\.\d{4})", out)
    assert shown and shown[-1] == "1.9550", shown
    # The panel holds the latest sample, not the first.
    assert "sample at step 680" in out and "Second" in out.split("sample at step 680")[-1]


def test_a_resumed_runs_bar_shows_its_best_validation_until_the_next(monkeypatch):
    # Seen by hand: after --resume the bar said `val -` until the first evaluation.
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(charrnn.cli.progress, "err", console)
    reporter = Reporter(quiet=False)
    resumed = RunStarted(1092, True, 1000, "cpu", "fp32", 10, None, 120.0, 1000, 100, 20)
    resumed.best_val = 1.6412
    reporter(resumed)
    reporter(_step(1093, 1.5))
    reporter.stop_live()
    out = screen.getvalue()
    assert "resuming at step 1092" in out
    assert re.findall(r"\| val (\S+)", out)[-1] == "1.6412", out


def test_a_warning_is_printed_above_the_live_display_which_goes_on(monkeypatch):
    # A time-limited run's first validation is often fitted to the time (a Notice): the
    # display used to stop there for good and fall back to plain log lines.
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    monkeypatch.setattr(charrnn.cli.progress, "err", console)
    monkeypatch.setattr(charrnn.cli.streams, "err", console)
    reporter = Reporter(quiet=False)
    reporter(_started())
    reporter(_step(20, 3.5))
    reporter(Notice("validating on 4,608 held-out characters instead of 111,534"))
    assert reporter.display is not None  # still live
    reporter(_step(21, 3.4))
    reporter.stop_live()
    out = screen.getvalue()
    assert "warning: validating on 4,608" in out
    assert "step     21" in out.split("warning:")[-1]  # the bar, redrawn below the warning
    assert "grad norm" not in out  # no plain log line: the display went on


def test_each_evaluation_logs_train_loss_and_the_same_seed_sample(tmp_path):
    events = []
    tiny_run(
        PATTERN * 60, str(tmp_path), max_steps=120, eval_every=40, lr=2e-2, on_event=events.append
    )
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [40, 80, 120]
    losses = [r["train_loss"] for r in lines]
    # The mean over the windows since the previous evaluation falls as the pattern is learned.
    assert losses[-1] < losses[0] / 2
    samples = [r["sample"] for r in lines]
    assert all(len(s) == 1 + 200 for s in samples)  # the seed character, then 200 drawn
    assert samples[-1] != samples[0]
    # Fixed seed: once learned, the sample is the pattern itself.
    assert "hello world" in samples[-1]
    evaluated = [e for e in events if isinstance(e, Evaluated)]
    assert [e.sample for e in evaluated] == samples
    assert [e.train_loss for e in evaluated] == losses


def test_the_sample_is_the_same_for_the_same_weights(tmp_path):
    a, _ = tiny_run(PATTERN * 60, str(tmp_path / "a"), max_steps=10, eval_every=10)
    b, _ = tiny_run(PATTERN * 60, str(tmp_path / "b"), max_steps=10, eval_every=10)
    assert a.history[0]["sample"] == b.history[0]["sample"]


@pytest.mark.slow
def test_sample_length_option_sets_the_length_and_zero_turns_it_off(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(PATTERN * 60)
    tiny = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16"]
    tiny += ["--device", "cpu", "--max-steps", "10", "--eval-every", "5"]
    r = run_cli("train", str(corpus), "--out", str(tmp_path / "a"), *tiny, "--sample-length", "30")
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [len(x["sample"]) for x in records] == [31, 31]
    # Logs (stderr is a pipe here): the sample on one line, as a JSON string.
    logged = [x for x in r.stderr.splitlines() if x.startswith("step 5 | sample ")]
    assert (
        len(logged) == 1
        and json.loads(logged[0][len("step 5 | sample ") :]) == records[0]["sample"]
    )
    r = invoke("train", str(corpus), "--out", str(tmp_path / "b"), *tiny, "--sample-length", "0")
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all("sample" not in x and "train_loss" in x for x in records)
    assert "| sample " not in r.stderr
    r = invoke("train", str(corpus), "--out", str(tmp_path / "c"), *tiny, "--sample-length", "-1")
    assert r.returncode == 2 and "error: --sample-length must be >= 0" in r.stderr
