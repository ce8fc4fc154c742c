"""The training loop: it learns, clips, follows its schedule, saves and resumes exactly."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import PATTERN, shakespeare_head, tiny_configs, tiny_run
from torch.optim.optimizer import register_optimizer_step_pre_hook

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import SampleConfig, TrainConfig
from charrnn.sample import generate
from charrnn.training import StepDone, StopRequest, clip_gradients, learning_rate, limit_steps


def test_a_tiny_repeated_corpus_is_learned_and_reproduced(tmp_path):
    text = PATTERN * 60
    result, _ = tiny_run(
        text, str(tmp_path), max_steps=150, eval_every=50, lr=2e-2, batch_size=4, seq_len=16
    )
    assert result.last_val_loss < 0.05  # nats/char: near zero
    model, vocab = model_from_checkpoint(load_checkpoint(str(tmp_path / "last.pt")))
    out = "".join(t for _, t in generate(model, vocab, "h", SampleConfig(length=40, temperature=0)))
    assert out == (PATTERN * 4)[:41]


def test_clipping_bounds_the_global_norm_and_keeps_the_direction():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    before = [p.grad.clone() for p in params]
    norm = clip_gradients(params, 1.0)
    expected = math.sqrt(sum(float((g**2).sum()) for g in before))
    assert norm == pytest.approx(expected, rel=1e-5)  # the pre-clip norm is reported
    after = math.sqrt(sum(float((p.grad**2).sum()) for p in params))
    assert after <= 1.0 + 1e-5
    for p, g in zip(params, before, strict=True):  # scaled by threshold / norm
        torch.testing.assert_close(p.grad, g * (1.0 / norm))


def test_the_training_loop_clips_every_step(tmp_path):
    norms = []

    def check(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(check)
    reported = []
    try:
        tiny_run(
            shakespeare_head(5000),
            str(tmp_path),
            grad_clip=0.05,
            max_steps=10,
            on_event=lambda e: reported.append(e.grad_norm) if isinstance(e, StepDone) else None,
        )
    finally:
        handle.remove()
    assert len(norms) == 10
    assert max(norms) <= 0.05 * (1 + 1e-4)
    assert min(reported) > 0.05  # the pre-clip norms were larger: clipping did act


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(lr=1e-2, warmup_steps=10, lr_min_ratio=0.1)
    assert learning_rate(0, config, 100) == pytest.approx(1e-3)
    assert learning_rate(9, config, 100) == pytest.approx(1e-2)
    assert learning_rate(10, config, 100) == pytest.approx(1e-2)
    assert learning_rate(55, config, 100) == pytest.approx(1e-3 + 0.5 * 9e-3)
    assert learning_rate(100, config, 100) == pytest.approx(1e-3)
    assert learning_rate(500, config, 100) == pytest.approx(1e-3)


def test_limits_count_steps_and_epochs():
    assert limit_steps(TrainConfig(max_steps=7), 100) == 7
    assert limit_steps(TrainConfig(epochs=1.5), 10) == 15
    assert limit_steps(TrainConfig(epochs=2, max_steps=7), 10) == 7
    assert limit_steps(TrainConfig(time_limit=60), 10) is None
    assert limit_steps(TrainConfig(), 10) > 0  # no limit given: the default epochs


def weights_of(path: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state"]


def test_same_seed_same_weights_and_different_seed_differs(tmp_path):
    text = shakespeare_head(6000)
    tiny_run(text, str(tmp_path / "a"), dropout=0.2, max_steps=8)
    tiny_run(text, str(tmp_path / "b"), dropout=0.2, max_steps=8)
    tiny_run(text, str(tmp_path / "c"), dropout=0.2, max_steps=8, random_seed=7)
    a, b, c = (weights_of(str(tmp_path / x / "last.pt")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("stop_at", [3, 11])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, stop_at):
    # 7 windows per epoch, so the interrupted run stops mid-epoch and resumes across
    # epoch boundaries; dropout makes the RNG state matter.
    text = shakespeare_head(4000)
    opts = {"dropout": 0.3, "max_steps": 20, "eval_every": 6, "batch_size": 8, "seq_len": 60}
    full, _ = tiny_run(text, str(tmp_path / "full"), **opts)

    stop = StopRequest()

    def interrupt(event):
        if isinstance(event, StepDone) and event.step == stop_at:
            stop.set("SIGINT")

    part, _ = tiny_run(text, str(tmp_path / "part"), stop=stop, on_event=interrupt, **opts)
    assert part.stop_reason == "SIGINT" and part.step == stop_at
    ckpt = load_checkpoint(str(tmp_path / "part" / "last.pt"))
    assert ckpt["step"] == stop_at
    resumed, _ = tiny_run(text, str(tmp_path / "part"), resume=ckpt, **opts)

    assert resumed.step == full.step == 20
    a = weights_of(str(tmp_path / "full" / "last.pt"))
    b = weights_of(str(tmp_path / "part" / "last.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_val_loss == full.last_val_loss
    assert resumed.best_val_loss == full.best_val_loss


def test_checkpoint_is_self_describing_and_reloads_to_identical_logits(trained):
    path = os.path.join(trained, "last.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "charrnn-checkpoint" and ckpt["version"] == 1
    for key in (
        "model_config",
        "train_config",
        "vocab",
        "optimizer_state",
        "step",
        "epoch",
        "cursor",
        "hidden",
        "rng",
        "history",
    ):
        assert key in ckpt, key
    assert all(t.device.type == "cpu" for t in ckpt["model_state"].values())
    model_a, vocab = model_from_checkpoint(ckpt)
    model_b, _ = model_from_checkpoint(load_checkpoint(path))
    idx = torch.tensor([vocab.encode("First Citizen:")])
    with torch.no_grad():
        assert torch.equal(model_a(idx)[0], model_b(idx)[0])


def test_best_and_last_checkpoints_and_metrics_log(trained):
    with open(os.path.join(trained, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert [r["step"] for r in lines] == [15, 30]
    assert all(r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2)) for r in lines)
    best = load_checkpoint(os.path.join(trained, "best.pt"))
    assert best["best_val_loss"] == min(r["val_loss"] for r in lines)


def test_bf16_autocast_trains_to_the_same_loss_as_fp32(tmp_path, monkeypatch):
    # bf16 forced on: in hardware where the CPU has it, emulated (slowly) where it has not;
    # the numbers are bf16's either way. (It once failed on CPUs without AVX512: oneDNN has
    # no bf16 LSTM kernel there, and --precision bf16 is now refused on such CPUs.)
    monkeypatch.setenv("CHARRNN_CPU_BF16", "1")
    text = shakespeare_head(8000)
    fp32, _ = tiny_run(text, str(tmp_path / "a"), max_steps=40, eval_every=40)
    bf16, _ = tiny_run(text, str(tmp_path / "b"), max_steps=40, eval_every=40, precision="bf16")
    assert bf16.last_val_loss < math.log(56) - 0.5  # it learned (56 characters)
    assert bf16.last_val_loss != fp32.last_val_loss  # in bf16: not fp32's numbers
    assert abs(fp32.last_val_loss - bf16.last_val_loss) < 0.05


def test_tiny_configs_are_valid():
    model, run = tiny_configs(hidden_size=8)
    assert model.hidden_size == 8 and run.batch_size == 4


def test_a_time_limited_run_replans_between_evaluations(tmp_path, monkeypatch):
    # The first plan comes from the first, slowest steps; a run with no evaluation after it
    # must still re-plan from the speed it measures, or it ends well before its time.
    import charrnn.training.budget

    monkeypatch.setattr(charrnn.training.budget, "REPLAN_SECONDS", 0.2)
    plans = []

    def record(event):
        if isinstance(event, StepDone) and event.plan_steps is not None:
            plans.append(event.plan_steps)

    result, _ = tiny_run(
        shakespeare_head(), str(tmp_path), on_event=record, max_steps=None,
        time_limit=3.0, eval_every=10**6,
    )  # fmt: skip
    assert result.stop_reason == "time_limit"
    # The calibration at step 20 is the run's only evaluation, yet the plan moved.
    assert [h["step"] for h in result.history][:1] == [20] and len(result.history) <= 2
    assert len(set(plans)) > 1
