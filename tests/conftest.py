"""Tiny corpora, configs and a trained checkpoint shared by the tests (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.corpus import Text, build_corpus
from charrnn.rundir import RunDir
from charrnn.training import train
from charrnn.vocab import Vocab

torch.set_num_threads(1)  # small ops: threads only add overhead and noise
# The id cache of every run the tests start (in process or in a subprocess, which inherits
# the environment) goes to a private folder, never the user's ~/.cache.
os.environ["CHARRNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="charrnn-test-cache-")

PATTERN = "hello world! "
SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "corpora", "tinyshakespeare.txt")


def shakespeare_head(num_chars: int = 20000) -> str:
    with open(SHAKESPEARE, encoding="utf-8") as f:
        return f.read(num_chars)


def tiny_configs(**overrides) -> tuple[ModelConfig, TrainConfig]:
    model = {"model": "lstm", "hidden_size": 32, "num_layers": 2, "dropout": 0.0}
    model |= {"input": "auto", "embedding_size": 16}
    run = {
        "batch_size": 4,
        "seq_len": 16,
        "lr": 1e-2,
        "warmup_steps": 5,
        "max_steps": 20,
        "eval_every": 10,
        "precision": "fp32",
        "device": "cpu",
    }
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for k, v in overrides.items():
        (model if k in model_fields else run)[k] = v
    return ModelConfig(**model), TrainConfig(**run)


def tiny_run(text: str, out: str, resume=None, stop=None, on_event=None, **overrides):
    """Train through the library exactly as the CLI does; returns (result, corpus).

    With `resume` (a loaded checkpoint) and no overrides, the configs come from the
    checkpoint, as `charrnn train --resume` takes them.
    """
    if resume is not None and not overrides:
        model_config = ModelConfig.from_dict(resume["model_config"])
        config = TrainConfig.from_dict(resume["train_config"])
    else:
        model_config, config = tiny_configs(**overrides)
    corpus = build_corpus(
        Text(text, "<test>"),
        config.val_fraction,
        config.batch_size * config.seq_len + 1,
        Vocab.from_list(resume["vocab"]) if resume is not None else None,
    )
    model_config = ModelConfig(**{**model_config.to_dict(), "vocab_size": len(corpus.vocab)})
    run_dir = RunDir(out)
    run_dir.prepare(resume=resume is not None, force=True)
    run_dir.lock()
    try:
        result = train(model_config, config, corpus, run_dir, on_event, resume, stop)
    finally:
        run_dir.release()
    return result, corpus


def run_cli(*args: str, input: str | None = None, timeout: float = 120, cwd=None):
    """Run `python -m charrnn ARGS` as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> str:
    """A small LSTM trained for a few steps on a slice of Shakespeare; returns its folder."""
    out = str(tmp_path_factory.mktemp("trained"))
    tiny_run(shakespeare_head(), out, max_steps=30, eval_every=15)
    return out
