"""What a run tells its caller: the events `on_event` receives, the result, the stop flag.

Nothing here prints: the CLI renders these objects (minGPT's trainer callbacks), and tests
run `train()` silently. Their fields are the interface the CLI and `import charrnn` see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunStarted:
    step: int  # 0, or the step resumed from
    resumed: bool
    num_params: int
    device: str
    precision: str
    steps_per_epoch: int
    limit_steps: int | None  # from --max-steps / --epochs (or the default epochs)
    time_limit: float | None
    train_chars: int
    val_chars: int
    vocab_size: int
    val_used: int | None = None  # held-out characters each evaluation predicts (the bound)
    input: str = "onehot"  # ModelConfig.input, resolved: "onehot" or "embedding"
    processes: int = 1  # torchrun's world size: the processes training together
    best_val: float | None = None  # a resumed run's best validation loss so far


@dataclass
class StepDone:
    step: int
    epoch: float  # fractional: epochs completed plus the part of this one
    loss: float  # nats/char of this window
    grad_norm: float  # global L2 norm before clipping
    lr: float
    chars_per_sec: float
    elapsed: float  # seconds of this invocation
    eta: float | None  # seconds to the end, when it can be known
    plan_steps: int | None


@dataclass
class Evaluated:
    step: int
    epoch: float
    val_loss: float  # nats/char
    val_bpc: float  # bits/char
    is_best: bool
    elapsed: float
    train_loss: float | None = None  # mean over the windows since the previous evaluation
    sample: str | None = None  # fixed-seed sample, comparable across evaluations


@dataclass
class Notice:
    message: str


@dataclass
class TrainResult:
    step: int
    epoch: float
    best_val_loss: float | None
    last_val_loss: float | None
    # "max_steps" | "epochs" | "time_limit" | "interrupted" | "SIGINT" | "SIGTERM", or
    # "already_done": a resumed run that had reached its limit (nothing was changed)
    stop_reason: str
    elapsed: float
    history: list[dict[str, Any]] = field(default_factory=list)
    last_path: str | None = None  # the run's checkpoints (set by charrnn.train())
    best_path: str | None = None


class StopRequest:
    """Set from a signal handler; the loop checks it between steps and stops cleanly."""

    def __init__(self) -> None:
        self.reason: str | None = None
        # Set once training has begun: a signal before then has nothing to save, so the
        # CLI's handler ends the process at once instead.
        self.armed = False

    def set(self, reason: str = "interrupted") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None
