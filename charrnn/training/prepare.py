"""What a run trains with: the device and precision, the model (DDP-wrapped under
torchrun), Adam, and this process's streams of the training text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..batches import Streams, make_streams, shard_span
from ..checkpoint import trained_precision
from ..config import ModelConfig, TrainConfig
from ..corpus import Corpus
from ..device import bf16_missing, configure_backends, resolve_device, resolve_precision
from ..distributed import World
from ..model import CharRNN
from .average import WeightAverage
from .events import Notice


@dataclass
class Parts:
    world: World  # the processes of a torchrun launch (World(): this one alone)
    device: torch.device
    precision: str  # "fp32" or "bf16", resolved for this device
    model: CharRNN
    net: torch.nn.Module  # the model, or DDP around it: what the forward pass calls
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    streams: Streams  # this process's rows of the batch
    average: WeightAverage | None = None  # --ema: the weights validated and saved


def prepare(
    model_config: ModelConfig,
    config: TrainConfig,
    corpus: Corpus,
    world: World,
    weights: dict[str, Any] | None,
    emit: Callable[[Any], None],
    resume: dict[str, Any] | None,
) -> Parts:
    """Everything the loop trains with, the weights from `weights` if given: the ones Adam
    was moving (training_weights, when the run averages them), else its model_state."""
    device = world.device(resolve_device(config.device), config.device)
    if world.launched and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's streams and DDP's buckets live there
    precision = choose_precision(config.precision, device, resume, emit)
    configure_backends(device)

    # Initialise on the CPU from the seed, so the same seed gives the same initial
    # weights whichever device trains them.
    torch.manual_seed(config.random_seed)
    model = CharRNN(model_config)
    if weights is not None:
        model.load_state_dict(weights.get("training_weights") or weights["model_state"])
    model.to(device)
    if world.rank > 0:  # dropout: each process draws its own masks for its own rows
        torch.manual_seed(rank_seed(config.random_seed, world.rank, 0))
    # Under torchrun, DDP averages the gradients of all processes in backward.
    net: torch.nn.Module = model
    if world.launched:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    average = WeightAverage(named, config.ema) if config.ema > 0 else None
    optimizer = torch.optim.Adam(params, lr=config.lr, **fused_adam(device))

    # --batch-size counts the streams of all processes: this one takes its rows.
    # Only this process's part of the text goes to its device.
    rows = config.batch_size // world.size
    mine = shard_span(corpus.train, rows, world.rank, world.size).to(device)
    streams = make_streams(mine, rows, config.seq_len)
    return Parts(world, device, precision, model, net, params, optimizer, streams, average)


def choose_precision(
    asked: str,
    device: torch.device,
    resume: dict[str, Any] | None,
    emit: Callable[[Any], None],
) -> str:
    """The precision this invocation trains in. A checkpoint resumes on any machine: a
    run that asked for bf16 continues in fp32 where this device has none (a new run is
    refused instead). A change from the precision the checkpoint trained in is said once."""
    missing = bf16_missing(device) if asked != "fp32" else None
    if resume is None:
        return resolve_precision(asked, device)
    precision = "fp32" if asked == "bf16" and missing else resolve_precision(asked, device)
    before = trained_precision(resume)
    if before is not None and before != precision:
        why = f": {missing}" if missing and precision == "fp32" else f" (--precision {asked})"
        emit(Notice(f"the checkpoint trained in {before}; this run continues in {precision}{why}"))
    return precision


def rank_seed(seed: int, rank: int, step: int) -> int:
    # Distinct for each (run seed, process, step resumed at); torch takes 64-bit seeds.
    return (seed * 1_000_003 + rank * 7919 + step) % 2**63


def fused_adam(device: torch.device) -> dict[str, Any]:
    # The fused Adam kernel does the update in one launch per step on CUDA, and on the CPU
    # in one pass over each tensor instead of about ten (a V = 6,000 model has 2.3 M
    # parameters in its embedding and output layer).
    return {"fused": True} if device.type in ("cuda", "cpu") else {}
