"""`charrnn eval --dynamic` and `Model.score(dynamic=...)` (issue 20, part 3): dynamic
evaluation scores each segment before it learns from it, and leaves the model and the
checkpoint as they were."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli, shakespeare_head, tiny_run

import charrnn
from charrnn.config import ModelConfig
from charrnn.dynamic import Adapter, DynamicConfig, segment_losses, segments
from charrnn.errors import UsageError
from charrnn.model import CharRNN, detach_hidden


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dynamic") / "run"
    tiny_run(shakespeare_head(), str(out), max_steps=20, eval_every=10, dropout=0.1)
    return out / "best.pt"


# ------------------------------------------------------------------- no peeking


V = 16  # characters of the random text
N = 6000  # characters predicted


def fresh_model() -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=32, num_layers=1, dropout=0.0, embedding_size=8, vocab_size=V)
    return CharRNN(config)


def uniform_text() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (N + 1,), generator=generator)  # (N + 1,) i.i.d. uniform ids


# A step size large enough that learning from a segment before scoring it shows: each
# 50-character segment of 16 kinds has its own frequencies, which a peek can fit.
EAGER = DynamicConfig(lr=0.1, decay=0.0)


def leaking_losses(model: CharRNN, ids: torch.Tensor, config: DynamicConfig) -> torch.Tensor:
    """The wrong order, for the test's sake: learn from a segment, then score it."""
    adapter = Adapter(model, config)
    losses, hidden = [], None
    model.eval()
    try:
        for x, y in segments(ids, config.segment_len):
            logits, _ = model(x.view(1, -1), hidden)  # (1, T, V)
            torch.nn.functional.cross_entropy(logits[0], y).backward()
            adapter.step()  # the peek
            logits, hidden = model(x.view(1, -1), hidden)  # (1, T, V), now from θ_i
            losses.append(torch.nn.functional.cross_entropy(logits[0], y, reduction="none"))
            hidden = detach_hidden(hidden)
    finally:
        adapter.restore()
    return torch.cat(losses).detach().double()


def floor(losses: torch.Tensor) -> float:
    """The least mean loss an honest predictor of i.i.d. uniform characters can show here.

    Whatever the model predicts for a character, if it was fixed before the character was
    seen, its expected loss is at least ln V (Gibbs' inequality: cross-entropy against the
    uniform distribution is ln V plus a KL divergence >= 0). The losses minus those
    expectations form a martingale difference sequence, so their mean over N characters
    falls below 0 by more than 4 standard errors with probability about 3e-5 (the
    martingale central limit theorem). The text is seeded, so the test is deterministic."""
    return math.log(V) - 4 * losses.std().item() / math.sqrt(len(losses))


def test_honest_dynamic_evaluation_never_beats_chance_on_random_characters():
    model, ids = fresh_model(), uniform_text()
    honest = segment_losses(model, ids, EAGER, torch.device("cpu"))
    assert len(honest) == N
    assert honest.mean().item() >= floor(honest)
    # The test can fail: the same steps taken before scoring go well below ln V.
    leaked = leaking_losses(model, ids, EAGER)
    assert leaked.mean().item() < floor(leaked) - 0.05


def test_a_step_changes_only_what_comes_after_it():
    """Each segment's losses are those of the weights before its own step: changing a later
    segment's characters cannot change an earlier segment's scores."""
    model, ids = fresh_model(), uniform_text()[:301]
    changed = ids.clone()
    changed[200:] = (changed[200:] + 1) % V
    config = DynamicConfig(lr=0.03, decay=0.0, segment_len=50)
    a = segment_losses(model, ids, config, torch.device("cpu"))
    b = segment_losses(model, changed, config, torch.device("cpu"))
    assert torch.equal(a[:199], b[:199])  # ids[1:200] are predicted before any change
    assert not torch.equal(a[200:], b[200:])


# ------------------------------------------------------------------- the rule


def test_no_steps_is_plain_evaluation(ckpt):
    model = charrnn.load(str(ckpt))
    text = shakespeare_head(3000)
    still = DynamicConfig(lr=0.0, decay=0.0)
    assert model.score(text, dynamic=still) == pytest.approx(model.score(text), abs=1e-5)


def test_dynamic_evaluation_learns_a_text_that_repeats(ckpt):
    model = charrnn.load(str(ckpt))
    generator = torch.Generator().manual_seed(2)
    piece = "".join(model.vocab.chars[i] for i in torch.randint(0, 30, (300,), generator=generator))
    text = piece * 6  # each repeat is predictable from the ones before it
    plain = model.score(text)
    assert model.score(text, dynamic=DynamicConfig(lr=3e-3)) < plain - 0.3


def test_decay_pulls_the_weights_back_to_where_they_started():
    model = fresh_model()
    start = [p.detach().clone() for p in model.parameters()]
    adapter = Adapter(model, DynamicConfig(lr=0.0, decay=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    adapter.step()  # no gradients: only the decay moves them, half the way back
    for p, p0 in zip(model.parameters(), start, strict=True):
        assert torch.allclose(p, p0 + 0.5)
    adapter.restore()
    assert all(torch.equal(p, p0) for p, p0 in zip(model.parameters(), start, strict=True))


# ------------------------------------------------------------------- nothing changes


def test_score_leaves_the_model_as_it_was(ckpt):
    model = charrnn.load(str(ckpt))
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    text = shakespeare_head(1000)
    plain = model.score(text)
    assert model.score(text, dynamic=DynamicConfig(lr=3e-3)) != plain
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.score(text) == plain and model.module.training is False


def test_eval_dynamic_never_writes_the_checkpoint(ckpt, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text(shakespeare_head(1500), encoding="utf-8")
    digest, stat = ckpt.read_bytes(), ckpt.stat()
    plain = run_cli("eval", str(text), "-c", str(ckpt), "--json")
    dynamic = run_cli("eval", str(text), "-c", str(ckpt), "--json", "--dynamic")
    assert plain.returncode == 0 and dynamic.returncode == 0, dynamic.stderr
    assert ckpt.read_bytes() == digest and ckpt.stat().st_mtime_ns == stat.st_mtime_ns
    p, d = json.loads(plain.stdout), json.loads(dynamic.stdout)
    assert p["dynamic"] is None and d["dynamic"]["lr"] == DynamicConfig().lr
    assert d["num_predicted"] == p["num_predicted"] == 1499
    assert d["loss_nats"] != p["loss_nats"] and d["seconds"] > 0


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dynamic-lr", "0.01"], "--dynamic-lr takes effect only with --dynamic"),
        (["--dynamic", "--dynamic-lr", "-1"], "--dynamic-lr must be a finite number >= 0"),
        (["--dynamic", "--dynamic-decay", "2"], "--dynamic-decay is a fraction"),
        (["--dynamic", "--dynamic-segment", "0"], "--dynamic-segment must be a finite number"),
    ],
)
def test_bad_dynamic_options_are_one_line_errors(ckpt, tmp_path, args, needle):
    text = tmp_path / "t.txt"
    text.write_text(shakespeare_head(200), encoding="utf-8")
    result = run_cli("eval", str(text), "-c", str(ckpt), *args)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_score_refuses_a_dynamic_that_is_not_a_switch_or_config(ckpt):
    model = charrnn.load(str(ckpt))
    with pytest.raises(UsageError, match=r"dynamic= must be True, False or a charrnn\.Dynamic"):
        model.score("hello", dynamic="yes")
    assert charrnn.DynamicConfig is DynamicConfig
    assert os.path.exists(ckpt)
