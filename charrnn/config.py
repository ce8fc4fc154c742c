"""Typed, frozen configuration. Every default is defined here, once; the CLI reads them.

Validation lives in ``__post_init__`` and raises :class:`UsageError` (never ``assert``,
which vanishes under ``python -O``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from .errors import UsageError

MODELS = ("lstm", "rnn", "gru")
PRECISIONS = ("auto", "fp32", "bf16")


def _positive(name: str, value: int | float) -> None:
    if value is None or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{name} must be a finite number greater than 0 (got {value})")


@dataclass(frozen=True)
class ModelConfig:
    model: str = "lstm"  # recurrent cell: "lstm", "rnn" (tanh) or "gru"
    vocab_size: int = 0  # distinct characters in the corpus; set from the data, not by hand
    hidden_size: int = 256  # units per recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.2  # between layers and before the output layer; 0 turns it off

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UsageError(f"unknown --model {self.model!r}: choose one of {', '.join(MODELS)}")
        _positive("--hidden-size", self.hidden_size)
        _positive("--num-layers", self.num_layers)
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1) (got {self.dropout})")
        if self.vocab_size < 0:
            raise UsageError(f"vocab_size must not be negative (got {self.vocab_size})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class TrainConfig:
    # data
    batch_size: int = 24  # parallel streams the training text is cut into
    seq_len: int = 64  # characters per truncated-BPTT window
    val_fraction: float = 0.1  # the last fraction of the text, held out for validation
    # optimisation
    lr: float = 4e-3  # peak Adam learning rate
    lr_min_ratio: float = 0.05  # the cosine schedule decays to lr * lr_min_ratio
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    grad_clip: float = 1.0  # clip the global L2 norm of all gradients to this; 0 = off
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto" (bf16 where it is fast)
    # when to stop: whichever comes first; with none given, `epochs` falls back to DEFAULT_EPOCHS
    max_steps: int | None = None
    epochs: float | None = None
    time_limit: float | None = None  # seconds of this invocation's training, evals included
    # bookkeeping
    eval_every: int = 1000  # steps between validation passes (and last.pt saves)
    random_seed: int = 1337
    device: str = "auto"
    # characters of the sample drawn at each evaluation (same seed each time); 0 = none
    sample_length: int = 200

    def __post_init__(self) -> None:
        _positive("--batch-size", self.batch_size)
        _positive("--seq-len", self.seq_len)
        _positive("--lr", self.lr)
        _positive("--eval-every", self.eval_every)
        if not 0.0 < self.val_fraction < 1.0:  # also refuses nan
            raise UsageError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        if not math.isfinite(self.grad_clip) or self.grad_clip < 0:
            raise UsageError(
                f"--grad-clip must be >= 0; 0 turns clipping off (got {self.grad_clip})"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise UsageError(f"lr_min_ratio must be in [0, 1] (got {self.lr_min_ratio})")
        if self.warmup_steps < 0:
            raise UsageError(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown --precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.sample_length < 0:
            raise UsageError(
                f"--sample-length must be >= 0; 0 turns it off (got {self.sample_length})"
            )
        for name in ("max_steps", "epochs", "time_limit"):
            value = getattr(self, name)
            if value is not None:
                _positive("--" + name.replace("_", "-"), value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# With no --max-steps, --epochs or --time-limit a run stops after this many epochs.
DEFAULT_EPOCHS = 10.0

# The only options a resumed run may change; everything else comes from the checkpoint.
RESUMABLE_OPTIONS = ("max_steps", "epochs", "time_limit", "eval_every", "device", "sample_length")


@dataclass(frozen=True)
class SampleConfig:
    length: int = 500  # characters generated after the seed
    temperature: float = 0.8  # logits are divided by this; 0 = always the most likely char
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    num_samples: int = 1
    random_seed: int | None = None  # None: a fresh sample each time

    def __post_init__(self) -> None:
        if self.length < 0:
            raise UsageError(f"--length must be >= 0 (got {self.length})")
        if self.temperature < 0 or math.isnan(self.temperature):
            raise UsageError(f"--temperature must be >= 0 (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1 (got {self.top_k})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"--top-p must be in (0, 1] (got {self.top_p})")
        _positive("--num-samples", self.num_samples)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s' / '5m' / '1.5h' / '120' (seconds) -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(
            f"--time-limit {text!r} is not a duration: write e.g. 90s, 5m or 1h "
            "(a bare number is seconds)"
        )
    seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise UsageError(f"--time-limit must be greater than 0 (got {text!r})")
    return seconds
