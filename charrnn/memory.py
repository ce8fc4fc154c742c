"""How much memory a training run will take, estimated from its sizes before allocating.

A corpus of random Unicode can have 100,000+ distinct characters; the default model then
needs (batch, window, V) logits and an H x V output layer large enough to exhaust the
machine, and an out-of-memory kill loses the run without a word. So `train()` first
estimates the peak from V, H, the layers, the batch and the window, and refuses with a
message naming the largest part when it exceeds MEMORY_FRACTION of what is available.

The estimate counts what grows with the options; the interpreter and torch themselves
(about 0.6 GB) are already in use, so they are not in "available" either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .config import ModelConfig, TrainConfig
from .errors import ResourceError
from .model import GATES, parameter_count

# Evaluation computes (S, chunk, V) float32 logits at a time (and cross_entropy one more
# tensor that size): chunks are shortened so one such tensor stays under this, whatever
# the vocabulary. Tiny Shakespeare keeps the full 1,024 (64 x 1024 x 65 x 4 B = 17 MB);
# 6,000 characters get 43-character chunks instead of 1.5 GB.
EVAL_LOGITS_BYTES = 64 * 2**20

# Refuse a run whose estimate exceeds this fraction of the memory available when it starts.
MEMORY_FRACTION = 0.8

# Bytes per parameter: fp32 weight, its gradient and Adam's two moments (16), plus the
# bf16 copies autocast makes of the matrices each step (2).
BYTES_PER_PARAM = 18
# Bytes per (batch x window x V) logit element in one step: bf16 logits, their float32
# copy, log-softmax kept for backward, the gradient in float32 and bf16 (2 + 4 + 4 + 4 + 2),
# and the same again of headroom for the allocator and the output layer's temporaries.
BYTES_PER_LOGIT = 32
# One-hot input: the float (B, T, V) tensor and its bf16 cast.
BYTES_PER_ONE_HOT = 6
# Each recurrent layer keeps per character its gate pre-activations and states for
# backward (G*H + a few H, float32 and bf16 copies): 16 bytes per gate unit, generously.
BYTES_PER_GATE_UNIT = 16


@dataclass(frozen=True)
class Estimate:
    parameters: int  # bytes: weights, gradients, Adam state, autocast copies
    logits: int  # bytes: the (B, T, V) tensors of one step
    one_hot: int  # bytes: the (B, T, V) one-hot input (0 for an embedding)
    recurrent: int  # bytes: the cells' saved activations
    evaluation: int  # bytes: validation's chunked logits

    @property
    def total(self) -> int:
        return self.parameters + self.logits + self.one_hot + self.recurrent + self.evaluation


def estimate(model: ModelConfig, train: TrainConfig) -> Estimate:
    chars = train.batch_size * train.seq_len
    cells = chars * model.num_layers * GATES[model.model] * model.hidden_size
    return Estimate(
        parameters=parameter_count(model) * BYTES_PER_PARAM,
        logits=chars * model.vocab_size * BYTES_PER_LOGIT,
        one_hot=chars * model.vocab_size * BYTES_PER_ONE_HOT if model.input == "onehot" else 0,
        recurrent=cells * BYTES_PER_GATE_UNIT,
        evaluation=3 * EVAL_LOGITS_BYTES,
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this run now: the GPU's free memory, or for the CPU the kernel's
    MemAvailable, lowered to the cgroup's limit where one is set. None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return min(found)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_memory(model: ModelConfig, train: TrainConfig, device: torch.device) -> Estimate:
    """Raise ResourceError if the run's estimate exceeds MEMORY_FRACTION of what is free."""
    est = estimate(model, train)
    free = available_bytes(device)
    if free is None or est.total <= MEMORY_FRACTION * free:
        return est
    parts = {
        "the (batch, window, vocabulary) logits": est.logits + est.one_hot,
        "the parameters and their optimizer state": est.parameters,
        "the recurrent activations": est.recurrent,
    }
    biggest = max(parts, key=parts.get)
    fixes = {
        "the (batch, window, vocabulary) logits": "lower --batch-size or --seq-len",
        "the parameters and their optimizer state": "lower --hidden-size"
        + (" or --embedding-size" if model.input == "embedding" else ", or use --input embedding"),
        "the recurrent activations": "lower --hidden-size, --num-layers or --batch-size",
    }
    raise ResourceError(
        f"training would need about {_gb(est.total)} of memory but {_gb(free)} is available "
        f"on {device.type} (vocabulary {model.vocab_size:,}, hidden {model.hidden_size}, "
        f"batch {train.batch_size}, window {train.seq_len}); {biggest} take "
        f"{_gb(parts[biggest])}: {fixes[biggest]}, or train on text with fewer distinct "
        "characters"
    )
