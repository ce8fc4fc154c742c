"""--ema: a moving average of the weights is what a run validates, samples and saves as
model_state, while Adam keeps moving the weights as trained (saved beside it), so Ctrl-C
and --resume stay exact."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import run_cli, shakespeare_head, tiny_run

import charrnn
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from charrnn.errors import CheckpointError
from charrnn.training import StepDone, StopRequest
from charrnn.training.average import RAMP, WeightAverage
from charrnn.training.evaluation import evaluate, val_streams

TEXT = shakespeare_head(6000)


def test_the_average_follows_the_formula_with_its_ramp():
    w = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([("w", w)], decay=0.9)
    want = torch.zeros(3)
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            w.fill_(value)
        average.update()
        d = min(0.9, (1 + n) / (RAMP + n))  # 0.1, 0.18, 0.25, 0.31: the early steps count more
        want = d * want + (1 - d) * value
        assert torch.allclose(average.average[0], want), n
    assert average.updates == 4


def test_applied_swaps_the_average_in_and_the_weights_back_even_on_an_error():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    average = WeightAverage([("w", w)], decay=0.5)
    with torch.no_grad():
        w.copy_(torch.tensor([5.0, 6.0]))
    with average.applied():
        assert torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
    assert torch.equal(w.detach(), torch.tensor([5.0, 6.0]))
    with pytest.raises(KeyboardInterrupt), average.applied():
        raise KeyboardInterrupt
    assert torch.equal(w.detach(), torch.tensor([5.0, 6.0]))


def test_the_validated_weights_are_the_saved_ones_and_differ_from_the_trained(tmp_path):
    result, corpus = tiny_run(TEXT, str(tmp_path), max_steps=20, ema=0.9)
    ckpt = load_checkpoint(str(tmp_path / "best.pt"))
    assert ckpt["weight_average"] == {"decay": 0.9, "updates": 20}

    def score(state):
        model, _ = model_from_checkpoint({**ckpt, "model_state": state})
        return evaluate(model, corpus.val, "cpu", num_streams=val_streams(len(corpus.val)))

    validated = ckpt["history"][-1]["val_loss"]
    assert score(ckpt["model_state"]) == pytest.approx(validated, abs=1e-6)
    assert score(ckpt["training_weights"]) != pytest.approx(validated, abs=1e-4)
    # `charrnn sample`, `eval` and the API read model_state: the average
    loaded = charrnn.load(str(tmp_path / "best.pt"))
    head = loaded.module.head.weight.detach()
    assert torch.equal(head, ckpt["model_state"]["head.weight"])
    assert not torch.equal(head, ckpt["training_weights"]["head.weight"])
    assert math.isfinite(result.best_val_loss)
    info = run_cli("info", str(tmp_path / "best.pt"))
    assert "weights      a moving average of the trained weights (--ema 0.9)" in info.stdout


def test_stop_and_resume_with_the_average_equals_never_stopped(tmp_path):
    options = dict(max_steps=16, ema=0.95, dropout=0.1)
    tiny_run(TEXT, str(tmp_path / "whole"), **options)
    stop = StopRequest()

    def on_event(event):
        if isinstance(event, StepDone) and event.step == 7:
            stop.set("SIGINT")

    parted = tmp_path / "parted"
    first, _ = tiny_run(TEXT, str(parted), stop=stop, on_event=on_event, **options)
    assert first.step == 7
    shutil.copy(parted / "last.pt", tmp_path / "stopped.pt")
    tiny_run(TEXT, str(parted), resume=load_checkpoint(str(tmp_path / "stopped.pt")))
    want = load_checkpoint(str(tmp_path / "whole" / "last.pt"))
    got = load_checkpoint(str(parted / "last.pt"))
    assert got["weight_average"] == want["weight_average"] == {"decay": 0.95, "updates": 16}
    for key in ("model_state", "training_weights"):
        for name in want[key]:
            assert torch.equal(want[key][name], got[key][name]), (key, name)


def test_a_run_without_ema_saves_only_its_weights(tmp_path):
    tiny_run(TEXT, str(tmp_path), max_steps=4)
    ckpt = load_checkpoint(str(tmp_path / "last.pt"))
    assert "training_weights" not in ckpt and "weight_average" not in ckpt
    assert "moving average" not in run_cli("info", str(tmp_path / "last.pt")).stdout


def test_resuming_an_average_without_its_training_weights_is_refused(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    options = dict(out=str(out), hidden_size=16, num_layers=1, batch_size=4, seq_len=16)
    charrnn.train(str(corpus), max_steps=3, ema=0.9, device="cpu", **options)
    ckpt = load_checkpoint(str(out / "last.pt"))
    del ckpt["training_weights"]
    save_checkpoint(ckpt, str(out / "last.pt"))
    with pytest.raises(CheckpointError, match="training_weights is not a dict"):
        charrnn.train(str(corpus), out=str(out), resume=True, max_steps=6)


@pytest.mark.parametrize("value", ["1", "-0.5", "nan"])
def test_a_bad_decay_is_a_one_line_error(tmp_path, value):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    result = run_cli("train", str(corpus), "--out", str(tmp_path / "o"), "--ema", value)
    assert result.returncode == 2, result.stderr
    assert "--ema must be in [0, 1)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
