"""Print a sha256 of the weights and optimizer state of a set of tiny training runs.

A refactoring of the training loop must not change what it computes: run this before and
after, on the same machine, and compare the output line by line (issue 19). Not a test
(pytest does not collect it); tests/test_digest.py keeps a machine-robust fingerprint.

    .venv/bin/python tests/digest_runs.py > /tmp/digests.txt
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import shakespeare_head, tiny_run

TEXT = shakespeare_head(6000)


def _digest(path: str) -> str:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for name, tensor in sorted(ckpt["model_state"].items()):
        h.update(name.encode())
        h.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for key, state in sorted(ckpt["optimizer_state"]["state"].items()):
        for name, value in sorted(state.items()):
            h.update(f"{key}.{name}".encode())
            h.update(value.float().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    timeless = [
        {k: v for k, v in r.items() if k not in ("elapsed", "time")} for r in ckpt["history"]
    ]
    h.update(repr((ckpt["step"], ckpt["cursor"], ckpt["plan_steps"], timeless)).encode())
    return h.hexdigest()[:16]


def _library(name: str, out: str, **overrides) -> None:
    tiny_run(TEXT, out, **overrides)
    print(name, _digest(os.path.join(out, "last.pt")), _digest(os.path.join(out, "best.pt")))


def _interrupted(name: str, out: str, **overrides) -> None:
    try:
        from charrnn.training import StepDone, StopRequest
    except ImportError:  # before issue 19's refactoring
        from charrnn.training import StepDone, StopRequest

    stop = StopRequest()

    def at_step(event):
        if isinstance(event, StepDone) and event.step == 13:
            stop.set("SIGINT")

    first, _ = tiny_run(TEXT, out, stop=stop, on_event=at_step, **overrides)
    ckpt = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    tiny_run(TEXT, out, resume=ckpt)
    print(name, first.stop_reason, _digest(os.path.join(out, "last.pt")))


def _cli(name: str, out: str, *args: str, env: dict | None = None) -> None:
    corpus = os.path.join(out, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(TEXT)
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--out", os.path.join(out, "run")]
    cmd += ["--hidden-size", "32", "--num-layers", "2", "--batch-size", "4", "--seq-len", "16"]
    cmd += ["--max-steps", "20", "--eval-every", "10", "--device", "cpu", "-q", *args]
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})}, timeout=600)
    print(name, _digest(os.path.join(out, "run", "last.pt")))


def main() -> None:
    torch.set_num_threads(1)
    runs = [
        ("lstm-onehot", {"input": "onehot"}),
        ("lstm-embedding", {"input": "embedding"}),
        ("gru-onehot", {"model": "gru", "input": "onehot"}),
        ("gru-embedding", {"model": "gru", "input": "embedding"}),
        ("rnn-onehot", {"model": "rnn", "input": "onehot"}),
        ("rnn-embedding", {"model": "rnn", "input": "embedding"}),
        ("lstm-dropout", {"dropout": 0.3, "max_steps": 30}),
        ("lstm-epochs", {"max_steps": None, "epochs": 0.5}),
    ]
    for name, overrides in runs:
        with tempfile.TemporaryDirectory() as out:
            _library(name, out, **overrides)
    with tempfile.TemporaryDirectory() as out:
        _interrupted("lstm-sigint-resume", out)
    with tempfile.TemporaryDirectory() as out:
        _interrupted("gru-dropout-sigint-resume", out, model="gru", dropout=0.2)
    os.environ["CHARRNN_CPU_BF16"] = "1"
    with tempfile.TemporaryDirectory() as out:
        _library("lstm-bf16", out, precision="bf16", max_steps=10, eval_every=5)
    del os.environ["CHARRNN_CPU_BF16"]
    with tempfile.TemporaryDirectory() as out:
        _cli("cli-lstm", out)
    with tempfile.TemporaryDirectory() as out:
        _cli(
            "cli-nproc2-gru-dropout",
            out,
            "--nproc-per-node",
            "2",
            "--model",
            "gru",
            "--dropout",
            "0.2",
        )
    with tempfile.TemporaryDirectory() as out:
        _cli(
            "cli-bf16",
            out,
            "--precision",
            "bf16",
            "--max-steps",
            "8",
            env={"CHARRNN_CPU_BF16": "1"},
        )


if __name__ == "__main__":
    main()
