"""--ema: an exponential moving average of the weights, the copy a run validates and keeps.

Adam's last step leaves the weights wherever the last few batches pushed them; an average
over the recent steps sits nearer the middle of where they wandered, and often predicts
held-out text a little better (Polyak averaging; averaged SGD was the second largest
gain in the AWD-LSTM ablation). Training itself never sees the average: after each step,

    avg <- d * avg + (1 - d) * w

and only validation, the evaluation sample and the saved model_state use avg. The weights
Adam moves are saved beside it (training_weights), so --resume continues exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

# The decay at update n is min(decay, (1 + n) / (RAMP + n)), so an early average is not
# mostly the random initial weights: until (1 + n) / (10 + n) reaches the decay (n = 8,990
# for 0.999) the average's mean age is a tenth of the steps so far (440 at step 4,400).
RAMP = 10


class WeightAverage:
    """The running average of a model's trainable parameters (same device and dtype)."""

    def __init__(self, named: list[tuple[str, torch.Tensor]], decay: float):
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.decay = decay
        self.updates = 0
        self.average = [p.detach().clone() for p in self.params]

    def update(self) -> None:
        """Fold in the weights as they are now (after an optimizer step)."""
        decay = min(self.decay, (1 + self.updates) / (RAMP + self.updates))
        with torch.no_grad():
            for avg, p in zip(self.average, self.params, strict=True):
                avg.lerp_(p.detach(), 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones after it
        (whatever way the block ends)."""
        trained = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, avg in zip(self.params, self.average, strict=True):
                    p.copy_(avg)
            yield
        finally:
            with torch.no_grad():
                for p, kept in zip(self.params, trained, strict=True):
                    p.copy_(kept)

    def averaged(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` (the model's state_dict on the CPU) with the average in place of each
        trained parameter: read from the average itself, the live weights untouched."""
        return {
            **state,
            **{n: a.detach().cpu() for n, a in zip(self.names, self.average, strict=True)},
        }

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps beside the averaged weights (its model_state)."""
        return {"decay": self.decay, "updates": self.updates}

    def restore(self, averaged: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Take back a checkpoint's average: its model_state and state()."""
        with torch.no_grad():
            for name, avg in zip(self.names, self.average, strict=True):
                avg.copy_(averaged[name])
        self.updates = int(state["updates"])


def validated(average: WeightAverage | None) -> contextlib.AbstractContextManager:
    """The weights to validate and sample from: the average with --ema, else the model's."""
    return average.applied() if average is not None else contextlib.nullcontext()
