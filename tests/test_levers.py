"""The regularisers and schedules beyond the notes' plain model: weight drop (DropConnect
on W_hh), embedding dropout, locked (variational) dropout and the linear learning-rate
decay. Each is off unless asked for, changes only
training, and keeps Ctrl-C + --resume exact."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from conftest import run_cli, shakespeare_head, tiny_run

from charrnn.checkpoint import load_checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model import CharRNN
from charrnn.training import StepDone, StopRequest
from charrnn.training.budget import learning_rate


def _model(weight_drop: float = 0.0, **levers) -> CharRNN:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=20, hidden_size=32, num_layers=2, dropout=0.0)
    return CharRNN(ModelConfig(**{**config.to_dict(), "weight_drop": weight_drop, **levers}))


def _seen_by(module: torch.nn.Module, model: CharRNN, x: torch.Tensor) -> torch.Tensor:
    """What `module` of `model` receives when the model reads x."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    model(x)
    handle.remove()
    return seen[0]


def test_embedding_dropout_drops_a_character_everywhere_in_the_window_or_nowhere():
    model = _model(embed_dropout=0.5).train()
    x = torch.randint(0, 20, (4, 50))  # (B, T): every character occurs about ten times
    fed = _seen_by(model.rnn, model, x)  # (B, T, D)
    table = model.embed.weight.detach()  # (V, D)
    dropped = set()
    for char in x.unique().tolist():
        rows = fed[x == char]  # (occurrences, D)
        if torch.all(rows == 0):
            dropped.add(char)
        else:
            assert torch.allclose(rows, table[char].expand_as(rows) * 2), char  # 1/(1-p)
    assert 0 < len(dropped) < len(x.unique())
    model.eval()
    assert torch.equal(_seen_by(model.rnn, model, x), model.embed(x))


@pytest.mark.parametrize("locked", [True, False])
def test_locked_dropout_holds_its_mask_over_the_window(locked):
    model = _model(dropout=0.5, locked_dropout=locked).train()
    x = torch.randint(0, 20, (3, 40))
    fed = _seen_by(model.head, model, x)  # (B, T, H), the dropped output
    zero = fed == 0
    held = torch.all(zero == zero[:, :1, :])  # every step dropped the same units
    assert zero.float().mean() == pytest.approx(0.5, abs=0.1)
    assert held == locked
    model.eval()
    assert not torch.any(_seen_by(model.head, model, x) == 0)


def test_weight_drop_masks_w_hh_while_training_only():
    plain, dropped = _model(0.0), _model(0.5)
    dropped.load_state_dict(plain.state_dict())
    before = {k: v.clone() for k, v in dropped.state_dict().items()}
    x = torch.randint(0, 20, (3, 12))  # (B, T)
    plain.train(), dropped.train()
    a, _ = dropped(x)
    b, _ = dropped(x)
    assert not torch.equal(a, b)  # a new mask each window
    assert not torch.equal(a, plain(x)[0])
    # the parameters themselves are never changed, and evaluation uses all of them
    assert all(torch.equal(before[k], v) for k, v in dropped.state_dict().items())
    dropped.eval(), plain.eval()
    assert torch.equal(dropped(x)[0], plain(x)[0])


def test_weight_drop_zeroes_the_gradient_of_the_dropped_recurrent_weights_only():
    model = _model(0.5)
    model.train()
    logits, _ = model(torch.randint(0, 20, (4, 16)))
    logits.sum().backward()
    for k in range(2):
        zero_hh = (model.rnn.get_parameter(f"weight_hh_l{k}").grad == 0).float().mean()
        zero_ih = (model.rnn.get_parameter(f"weight_ih_l{k}").grad == 0).float().mean()
        assert 0.4 < zero_hh < 0.6, k  # half the connections dropped: no gradient
        assert zero_ih < 0.05, k


def test_the_linear_schedule_falls_in_a_straight_line_to_its_floor():
    config = TrainConfig(lr=1e-2, warmup_steps=10, lr_schedule="linear", lr_min_ratio=0.0)
    lrs = [learning_rate(s, config, plan_steps=110) for s in range(111)]
    assert lrs[10] == pytest.approx(1e-2)
    assert lrs[60] == pytest.approx(0.5e-2)
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
    steps = [b - a for a, b in itertools.pairwise(lrs[10:])]
    assert max(steps) == pytest.approx(min(steps))  # a straight line
    cosine = TrainConfig(lr=1e-2, warmup_steps=10, lr_min_ratio=0.0)
    assert learning_rate(35, cosine, 110) > learning_rate(35, config, 110)


TEXT = shakespeare_head(6000)
LEVERS = dict(
    weight_drop=0.3,
    embed_dropout=0.2,
    locked_dropout=True,
    lr_schedule="linear",
    lr_min_ratio=0.0,
    dropout=0.1,
)


def test_stop_and_resume_with_the_levers_equals_never_stopped(tmp_path):
    whole, _ = tiny_run(TEXT, str(tmp_path / "whole"), max_steps=16, **LEVERS)
    stop = StopRequest()

    def on_event(event):
        if isinstance(event, StepDone) and event.step == 7:
            stop.set("SIGINT")

    parted = tmp_path / "parted"
    first, _ = tiny_run(TEXT, str(parted), stop=stop, on_event=on_event, max_steps=16, **LEVERS)
    assert first.step == 7
    shutil.copy(parted / "last.pt", tmp_path / "stopped.pt")
    second, _ = tiny_run(TEXT, str(parted), resume=load_checkpoint(str(tmp_path / "stopped.pt")))
    assert second.step == whole.step == 16
    want = load_checkpoint(str(tmp_path / "whole" / "last.pt"))["model_state"]
    got = load_checkpoint(str(parted / "last.pt"))["model_state"]
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # and each lever did act: without it the weights differ
    for name, off in [("weight_drop", 0), ("embed_dropout", 0), ("locked_dropout", False)]:
        tiny_run(TEXT, str(tmp_path / name), max_steps=16, **{**LEVERS, name: off})
        other = load_checkpoint(str(tmp_path / name / "last.pt"))["model_state"]
        assert not torch.equal(want["rnn.weight_hh_l0"], other["rnn.weight_hh_l0"]), name


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--weight-drop", "1"], "--weight-drop must be in [0, 1)"),
        (["--embed-dropout", "-0.1"], "--embed-dropout must be in [0, 1)"),
        (["--lr-schedule", "step"], "unknown --lr-schedule 'step'"),
    ],
)
def test_bad_lever_values_are_one_line_errors(tmp_path, args, named):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = run_cli("train", str(corpus), "--out", str(tmp_path / "o"), *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
