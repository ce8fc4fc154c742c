"""The training loop computes what it always computed: a fingerprint of tiny runs' weights.

A refactoring of charrnn.training must leave the weights of the same seed, text and options
unchanged. Bit-identical weights cannot be stored for every machine (float kernels differ:
AVX2 against AVX-512, a newer torch), so tests/digest_tiny_runs.json keeps, for each run,
what any behaviour change moves far more than rounding does: the exact step, cursor, plan
and history length, and per tensor of the weights and Adam's moments the sum, the sum of
absolute values and the first and last values, compared with a relative tolerance of 2e-5
(a different step, learning rate, dropout mask or state carried differently changes them
by 1e-3 or more; rounding differences across CPUs stay near 1e-6).

tests/digest_runs.py compares sha256 digests (bit for bit) before and after a change on one
machine; this test keeps that promise in the suite without the old commit.

Regenerate only when a change is meant to alter training (say so in its commit):

    .venv/bin/python tests/test_digest.py --regenerate
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from conftest import shakespeare_head, tiny_run

from charrnn.training import StepDone, StopRequest

STORED = os.path.join(os.path.dirname(__file__), "digest_tiny_runs.json")
RTOL, ATOL = 2e-5, 1e-6

# name -> (options, the step a SIGINT arrives at (then the run is resumed), or None)
RUNS = {
    "lstm-embedding-dropout-interrupted": (
        {"model": "lstm", "input": "embedding", "dropout": 0.2},
        7,
    ),
    "gru-onehot": ({"model": "gru", "input": "onehot"}, None),
    "rnn-onehot-epochs": (
        {"model": "rnn", "input": "onehot", "max_steps": None, "epochs": 0.4},
        None,
    ),
}


def _tensor_print(t: torch.Tensor) -> list[float]:
    flat = t.detach().double().reshape(-1)
    return [flat.sum().item(), flat.abs().sum().item(), flat[0].item(), flat[-1].item()]


def fingerprint(options: dict, interrupt_at: int | None, out: str) -> dict:
    text = shakespeare_head(6000)
    stop = StopRequest()

    def on_event(event):
        if isinstance(event, StepDone) and event.step == interrupt_at:
            stop.set("SIGINT")

    tiny_run(text, out, stop=stop, on_event=on_event, **options)
    ckpt = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    if interrupt_at is not None:
        assert ckpt["step"] == interrupt_at
        tiny_run(text, out, resume=ckpt)
        ckpt = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    tensors = {f"model.{k}": _tensor_print(v) for k, v in ckpt["model_state"].items()}
    for index, state in ckpt["optimizer_state"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            tensors[f"adam.{index}.{name}"] = _tensor_print(state[name])
    return {
        "exact": {
            "step": ckpt["step"],
            "cursor": ckpt["cursor"],
            "plan_steps": ckpt["plan_steps"],
            "history": len(ckpt["history"]),
            "adam_step": float(ckpt["optimizer_state"]["state"][0]["step"]),
        },
        "val_loss": [r["val_loss"] for r in ckpt["history"]],
        "tensors": tensors,
    }


@pytest.mark.parametrize("name", list(RUNS))
def test_a_tiny_run_trains_the_weights_it_always_did(name, tmp_path):
    with open(STORED, encoding="utf-8") as f:
        want = json.load(f)[name]
    got = fingerprint(*RUNS[name], str(tmp_path))
    assert got["exact"] == want["exact"]
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=RTOL, abs=ATOL)
    assert sorted(got["tensors"]) == sorted(want["tensors"])
    for key, values in want["tensors"].items():
        assert got["tensors"][key] == pytest.approx(values, rel=RTOL, abs=ATOL), key


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    import tempfile

    torch.set_num_threads(1)
    stored = {}
    for name, (options, interrupt_at) in RUNS.items():
        with tempfile.TemporaryDirectory() as out:
            stored[name] = fingerprint(options, interrupt_at, out)
    with open(STORED, "w", encoding="utf-8") as f:
        json.dump(stored, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {STORED}")
