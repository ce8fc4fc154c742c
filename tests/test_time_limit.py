"""--time-limit keeps room for the final validation: a run ends with a best.pt of its last
step, or, when there truly is no time, says which file holds the newest model."""

from __future__ import annotations

import os

import torch
from conftest import shakespeare_head, tiny_run
from typer.testing import CliRunner

import charrnn.training.evaluator
from charrnn.cli import app
from charrnn.training import Notice


def _step(path: str) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


def _slow_from(monkeypatch, step: int) -> None:
    """From `step` on, a validation's first chunk is estimated at 1,000 s."""
    real = charrnn.training.evaluator.Evaluator.first_chunk_estimate
    monkeypatch.setattr(
        charrnn.training.evaluator.Evaluator,
        "first_chunk_estimate",
        lambda self: 1000.0 if self.progress.step >= step else real(self),
    )


def test_a_time_limited_run_ends_with_a_validated_last_step(tmp_path):
    for i in range(3):  # it failed about half the time: three in a row must all validate
        out = str(tmp_path / str(i))
        result, _ = tiny_run(shakespeare_head(), out, max_steps=None, time_limit=2.0)
        assert result.stop_reason == "time_limit" and result.step > 20
        assert result.history[-1]["step"] == result.step
        # best.pt: the best of the validations, the final one included (keep-best)
        best = min(result.history, key=lambda r: r["val_loss"])["step"]
        assert _step(os.path.join(out, "best.pt")) == best
        assert _step(os.path.join(out, "last.pt")) == result.step


def test_a_run_without_time_to_validate_still_leaves_a_best_pt(tmp_path, monkeypatch):
    # From step 5 on, the validation looks far too slow for the time left (1,000 s a chunk):
    # the run stops there, and its final validation still scores a first chunk, since a run
    # without any best.pt leaves `charrnn sample` nothing to read.
    _slow_from(monkeypatch, 5)
    events = []
    out = str(tmp_path / "o")
    text = shakespeare_head(40000)
    result, _ = tiny_run(text, out, on_event=events.append, max_steps=None, time_limit=30.0)
    assert result.step == 5 and [h["step"] for h in result.history] == [5]
    assert os.path.exists(os.path.join(out, "best.pt"))
    assert not any("skipped" in e.message for e in events if isinstance(e, Notice))


def test_a_skipped_validation_names_the_newest_model(tmp_path, monkeypatch):
    out = str(tmp_path / "o")
    tiny_run(shakespeare_head(), out, max_steps=10, eval_every=10)  # best.pt at step 10
    resume = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    # Resumed with a time limit and no time to validate at all: last.pt moves on, best.pt
    # stays at step 10, and both the notice and the CLI's last line say so.
    _slow_from(monkeypatch, 13)
    events = []
    result, _ = tiny_run(
        shakespeare_head(), out, resume=resume, on_event=events.append, max_steps=None,
        time_limit=30.0, eval_every=10**6,
    )  # fmt: skip
    notice = [e.message for e in events if isinstance(e, Notice)][-1]
    last = os.path.join(out, "last.pt")
    assert f"the newest model is {last} (not validated); best.pt is from step 10" in notice
    assert _step(last) == result.step == 13 and _step(os.path.join(out, "best.pt")) == 10


def test_the_done_line_points_at_last_pt_when_it_is_newer(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare_head(30000))
    out = str(tmp_path / "o")
    tiny = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16"]
    args = ["train", str(corpus), "--out", out, *tiny, "--precision", "fp32", "--device", "cpu"]
    first = CliRunner().invoke(app, [*args, "--max-steps", "10", "--eval-every", "10"])
    assert first.exit_code == 0, first.output
    _slow_from(monkeypatch, 13)
    again = CliRunner().invoke(app, [*args[:4], "--resume", "--time-limit", "20s"])
    assert again.exit_code == 0, again.output
    last = os.path.join(out, "last.pt")
    assert f"is {last}: sample it with -c {last})" in again.output
    missing = CliRunner().invoke(app, ["sample", "-c", os.path.join(out, "nothere", "best.pt")])
    assert missing.exit_code == 1 and "not found" in missing.output
    os.unlink(os.path.join(out, "best.pt"))
    no_best = CliRunner().invoke(app, ["sample", "-c", os.path.join(out, "best.pt")])
    assert no_best.exit_code == 1
    assert f"the run there has no validated model yet: use -c {last}" in no_best.output
