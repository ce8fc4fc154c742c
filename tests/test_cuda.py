"""The GPU path, where there is one: skipped on CPU-only machines (CI, the dev box).

Run on a CUDA machine with `pytest tests/test_cuda.py`. Results on a GPU are not bitwise
those of the CPU (cuDNN kernels, TF32), so these tests check behaviour, not equality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PATTERN, tiny_run

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import SampleConfig
from charrnn.sample import NumpyStepper, TorchStepper, generate

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_the_gpu_learns_and_saves_a_cpu_checkpoint(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result, _ = tiny_run(
        PATTERN * 60, str(tmp_path), device=DEVICE, precision=precision,
        max_steps=150, eval_every=50, lr=2e-2,
    )  # fmt: skip
    assert result.last_val_loss < 0.1  # nats/char: the repeated pattern is learned
    ckpt = load_checkpoint(str(tmp_path / "last.pt"))
    tensors = list(ckpt["model_state"].values()) + list(ckpt["hidden"])
    assert all(t.device.type == "cpu" for t in tensors)  # loads on a CPU-only machine
    model, vocab = model_from_checkpoint(ckpt)
    out = "".join(t for _, t in generate(model, vocab, "h", SampleConfig(length=40, temperature=0)))
    assert out == (PATTERN * 4)[:41]


def test_sampling_on_the_gpu_follows_the_cpu_stepper(tmp_path):
    tiny_run(PATTERN * 60, str(tmp_path), max_steps=30, eval_every=30)
    model, vocab = model_from_checkpoint(load_checkpoint(str(tmp_path / "last.pt")))
    cpu = NumpyStepper(model, num_streams=2)  # first: it copies the weights out
    gpu = TorchStepper(model, 2, torch.device(DEVICE))
    for char in PATTERN * 2:
        ids = np.full(2, vocab.index[char], dtype=np.int64)
        np.testing.assert_allclose(gpu.step(ids), cpu.step(ids), rtol=1e-2, atol=1e-2)
