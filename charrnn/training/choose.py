"""The model of a run whose user named no size: its budget, this device's speed, then
charrnn/sizing.py's rule.

The speed comes from a few timed training steps. On a CPU it times the default size and
scales the fitted cost law by what it measured; elsewhere (a GPU, where small models are
bound by launch latency, not arithmetic) it times every candidate."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import sizing
from ..config import DEFAULT_EPOCHS, ModelConfig, TrainConfig
from ..corpus import Corpus
from ..device import autocast, resolve_device, resolve_precision
from ..distributed import World
from ..loss import cross_entropy
from ..memory import check_memory
from ..model import CharRNN, detach_hidden
from ..request import MODEL_OPTIONS
from ..threads import user_threads
from .prepare import fused_adam

WARMUP_STEPS = 2  # the first steps allocate and pick kernels: not timed
TIMED_STEPS = 5


@dataclass
class ModelChosen:
    """charrnn chose the model's size, the user having named none (an event)."""

    choice: sizing.Choice


def choose_for_run(
    given: dict[str, Any],
    config: TrainConfig,
    corpus: Corpus,
    world: World,
    started: float,
    always_time: bool = True,
) -> sizing.Choice:
    """Rank 0 times this device and chooses; every process trains what it chose. (Alone,
    World() makes this choose_model on config's device.) `always_time=False`: a run with no
    --time-limit skips the timing, which only a time limit turns into a size."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    request = (given, config, corpus, device, precision, started, world, always_time)
    return world.broadcast(
        world.together(lambda: choose_model(*request) if world.is_main else None)
    )


def wants_choice(given: dict[str, Any]) -> bool:
    """charrnn chooses the size when the user names neither its width nor its depth."""
    return "hidden_size" not in given and "num_layers" not in given


def choose_model(
    given: dict[str, Any],
    config: TrainConfig,
    corpus: Corpus,
    device: torch.device,
    precision: str,
    started: float,
    world: World,
    always_time: bool = True,
) -> sizing.Choice:
    """The choice for `corpus` within `config`'s limits, timed on `device` now; the time
    limit counts from `started` (time.perf_counter()), so reading the text and this timing
    are paid from it, as they are in the run. With a size named in `given`, nothing is
    chosen: what that size will do (--dry-run)."""
    model = ModelConfig(**{k: v for k, v in given.items() if k in MODEL_OPTIONS},
                        vocab_size=len(corpus.vocab))  # fmt: skip
    check_memory(model, config, device)  # a run too big even at the default size: no timing
    ids = corpus.train[: 4 * config.batch_size * config.seq_len]
    named = None if wants_choice(given) else (model.hidden_size, model.num_layers)
    # Counted in steps or epochs, the size is the default whatever the speed: the timing
    # (1 to 2 s, a sixth of a short run) would only fill in chars_per_sec.
    untimed = not always_time and config.time_limit is None and named is None
    if untimed:
        found = {sizing.DEFAULT_SIZE: math.nan}  # sizing.choose needs no speed without seconds
    elif named:
        found = {named: _time(model, config, ids, device, precision, named)}
    else:
        found = speeds(model, config, ids, device, precision)
    # Under torchrun each process steps its share of the batch, side by side.
    found = {size: speed * world.size for size, speed in found.items()}
    budget = _budget(config, len(corpus.train), started)
    choice = sizing.choose(len(corpus.train), budget, found, config.batch_size * config.seq_len,
                           "dropout" in given, _where(device, world), named)  # fmt: skip
    if untimed:
        choice = dataclasses.replace(choice, chars_per_sec=None)
    return dataclasses.replace(choice, cell=model.model)


def _where(device: torch.device, world: World) -> str:
    if world.size > 1:
        return f"{world.size} processes"
    return f"this {'CPU' if device.type == 'cpu' else device.type.upper()}"


def _budget(config: TrainConfig, train_chars: int, started: float) -> sizing.Budget:
    per_step = config.batch_size * config.seq_len
    limits, labels = [], []
    if config.max_steps is not None:
        limits.append(config.max_steps * per_step)
        labels.append(f"{config.max_steps:,} steps")
    epochs = config.epochs
    if epochs is None and config.max_steps is None and config.time_limit is None:
        epochs = DEFAULT_EPOCHS
    if epochs is not None:
        limits.append(epochs * train_chars)
        labels.append(f"{epochs:g} epochs")
    seconds, spent = None, time.perf_counter() - started
    if config.time_limit is not None:
        seconds = max(0.0, config.time_limit - spent)
        labels.insert(0, _duration(config.time_limit))
    chars = min(limits) if limits else None
    return sizing.Budget(seconds, chars, " or ".join(labels), spent)


def _duration(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not (h or m) else ""]
    return "".join(parts) if math.isfinite(seconds) else "?"


def speeds(
    model_config: ModelConfig,
    config: TrainConfig,
    ids: torch.Tensor,
    device: torch.device,
    precision: str,
    each: bool | None = None,
) -> dict[tuple[int, int], float]:
    """Characters per second of each of sizing.SIZES training on `ids` (1-D, the start of
    the training text) on `device`. `each`: time every size (default: off a CPU only)."""
    each = device.type != "cpu" if each is None else each
    if each:
        return {s: _time(model_config, config, ids, device, precision, s) for s in sizing.SIZES}
    measured = _cpu_time(model_config, config, ids, device, precision)
    v = model_config.vocab_size
    scale = measured * sizing.seconds_per_char(*sizing.DEFAULT_SIZE, v)
    return {size: scale / sizing.seconds_per_char(*size, v) for size in sizing.SIZES}


def _cpu_time(
    model_config: ModelConfig,
    config: TrainConfig,
    ids: torch.Tensor,
    device: torch.device,
    precision: str,
) -> float:
    """The default size's speed with the thread count the run will settle on: the faster
    of one thread and all (as threads.ThreadPilot chooses), unless the user fixed it. On a
    busy machine one thread can be several times faster."""
    before = torch.get_num_threads()
    fixed = config.threads or user_threads()
    # all threads first: switching the pool to more threads costs its first steps
    counts = [fixed] if fixed else sorted({1, before}, reverse=True)
    try:
        found = []
        for count in counts:
            torch.set_num_threads(count)
            found.append(_time(model_config, config, ids, device, precision, sizing.DEFAULT_SIZE))
        return max(found)
    finally:
        torch.set_num_threads(before)


def _time(
    model_config: ModelConfig,
    config: TrainConfig,
    ids: torch.Tensor,
    device: torch.device,
    precision: str,
    size: tuple[int, int],
) -> float:
    hidden, layers = size
    cfg = dataclasses.replace(model_config, hidden_size=hidden, num_layers=layers)
    with torch.random.fork_rng(devices=[]):  # the run's own seeding is left untouched
        model = CharRNN(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, **fused_adam(device))
    b, t = config.batch_size, config.seq_len
    need = b * t + 1
    window = ids[:need].long().repeat(need // max(1, len(ids)) + 1)[:need].to(device)
    x, y = window[:-1].view(b, t), window[1:].view(b, t)  # (B, T) inputs and targets
    state, took = None, []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):
        _sync(device)
        began = time.perf_counter()
        with autocast(device, precision):
            logits, state = model(x, state)  # (B, T, V)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state = detach_hidden(state, model.head.weight.dtype)
        _sync(device)
        took.append(time.perf_counter() - began)
    # the median step: one slowed by another program's burst does not set the speed
    return b * t / statistics.median(took[WARMUP_STEPS:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
