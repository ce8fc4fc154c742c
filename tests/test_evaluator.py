"""The evaluator and the run state on their own: when to validate, keep-best, skipping for
lack of time, and the checkpoint's round trip (no training loop runs here)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from conftest import shakespeare_head, tiny_configs

from charrnn.config import ModelConfig
from charrnn.corpus import Text, build_corpus
from charrnn.rundir import RunDir
from charrnn.training import Evaluated, Notice, StopRequest
from charrnn.training.run import _assemble


def _run(out: str, resume=None, events=None, **options):
    model_config, config = tiny_configs(**options)
    corpus = build_corpus(Text(shakespeare_head(6000), "t"), config.val_fraction, 65)
    model_config = ModelConfig(**{**model_config.to_dict(), "vocab_size": len(corpus.vocab)})
    run_dir = RunDir(out)
    run_dir.prepare(resume=resume is not None, force=True)
    emit = events.append if events is not None else (lambda event: None)
    return _assemble(model_config, config, corpus, run_dir, emit, resume, StopRequest(), None, None)


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_validation_comes_every_eval_every_steps_and_when_a_timed_run_calibrates(tmp_path):
    evaluator = _run(str(tmp_path), eval_every=10).evaluator
    assert [s for s in range(1, 31) if evaluator.should_validate(s, False)] == [10, 20, 30]
    assert not evaluator.should_validate(7, calibrating=True)  # no time limit: no calibration
    timed = _run(str(tmp_path / "t"), eval_every=10, max_steps=None, time_limit=60.0).evaluator
    assert timed.should_validate(7, calibrating=True)


def test_keep_best_saves_best_pt_only_for_a_better_loss(tmp_path):
    events = []
    run = _run(str(tmp_path), events=events, sample_length=0)
    p, evaluator = run.state.progress, run.evaluator
    for step, val in [(10, 2.0), (20, 2.5), (30, 1.5), (40, 1.7)]:
        p.step = step
        evaluator.train_loss(3.0)
        evaluator._keep(val, 100, elapsed=1.0)
    assert [e.is_best for e in events if isinstance(e, Evaluated)] == [True, False, True, False]
    assert p.best_val == 1.5 and p.last_val == 1.7
    assert _load(os.path.join(tmp_path, "best.pt"))["step"] == 30
    assert _load(os.path.join(tmp_path, "last.pt"))["step"] == 40
    assert [r["train_loss"] for r in p.history] == [3.0] * 4  # the mean since the last one


def test_a_validation_past_the_deadline_is_skipped_and_says_where_the_newest_model_is(tmp_path):
    events = []
    run = _run(str(tmp_path), events=events, max_steps=None, time_limit=60.0)
    p, evaluator = run.state.progress, run.evaluator
    p.step, p.best_val = 12, 2.0
    p.history = [{"step": 10, "val_loss": 2.0}]
    run.budget.deadline = time.perf_counter() - 1.0
    assert evaluator.validate(elapsed=61.0) is False
    notice = next(e.message for e in events if isinstance(e, Notice))
    assert notice.startswith("step 12: out of time, validation skipped; the newest model is ")
    assert notice.endswith("(not validated); best.pt is from step 10")
    assert _load(os.path.join(tmp_path, "last.pt"))["step"] == 12
    assert not os.path.exists(os.path.join(tmp_path, "best.pt"))


def test_a_run_without_best_pt_validates_its_final_step_even_out_of_time(tmp_path):
    events = []
    run = _run(str(tmp_path), events=events, max_steps=None, time_limit=60.0, sample_length=0)
    run.state.progress.step = 5
    run.budget.deadline = time.perf_counter() - 1.0
    assert run.evaluator.needs_final()
    assert run.evaluator.validate(elapsed=61.0, final=True)
    assert not run.evaluator.needs_final()
    assert _load(os.path.join(tmp_path, "best.pt"))["step"] == 5
    record = run.state.progress.history[-1]
    assert 0 < record["val_chars"] < run.evaluator.val_used  # what the (no) time allowed
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert any("the final validation predicted" in message for message in notices)


def test_the_run_state_goes_into_a_checkpoint_and_back_out(tmp_path):
    first = _run(str(tmp_path), max_steps=40)
    p = first.state.progress
    p.step, p.epoch, p.window = 37, 2, 5
    p.hidden = tuple(torch.randn(2, 4, 32) for _ in range(2))  # (L, B, H) h and c
    p.history = [{"step": 30, "val_loss": 2.25}, {"step": 35, "train_loss": 1.9}]
    p.best_val, p.last_val = 2.0, 2.25
    first.budget.plan = 40
    first.state.save(also_best=False)
    ckpt = _load(os.path.join(tmp_path, "last.pt"))
    assert ckpt["cursor"] == {"epoch": 2, "window": 5} and ckpt["plan_steps"] == 40
    again = _run(str(tmp_path), resume=ckpt, max_steps=40)
    q = again.state.progress
    assert (q.step, q.epoch, q.window, q.best_val, q.last_val) == (37, 2, 5, 2.0, 2.25)
    assert q.history == p.history and again.budget.plan == 40
    assert all(torch.equal(a, b) for a, b in zip(q.hidden, p.hidden, strict=True))
    for name, weight in first.parts.model.state_dict().items():
        assert torch.equal(again.parts.model.state_dict()[name], weight)
    other = _run(str(tmp_path), resume=ckpt, max_steps=80)  # new limits: a new schedule
    assert other.budget.plan == 80


def test_a_forced_run_replaces_the_previous_one_at_its_first_save(tmp_path):
    old = _run(str(tmp_path))
    old.state.progress.step = 3
    old.state.save(also_best=True)
    old.state.run_dir.append_metrics({"step": 3})
    new = _run(str(tmp_path))  # --force over it: nothing is removed yet
    assert os.path.exists(os.path.join(tmp_path, "best.pt"))
    new.state.progress.step = 1
    new.state.save(also_best=False)
    assert _load(os.path.join(tmp_path, "last.pt"))["step"] == 1
    assert not os.path.exists(os.path.join(tmp_path, "best.pt"))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))


def test_non_finite_weights_are_never_saved(tmp_path):
    run = _run(str(tmp_path))
    with torch.no_grad():
        next(run.parts.model.parameters()).fill_(float("nan"))
    with pytest.raises(Exception, match="became non-finite"):
        run.state.save(also_best=False)
    assert not os.path.exists(os.path.join(tmp_path, "last.pt"))
