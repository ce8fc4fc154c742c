"""Typed, frozen configuration. Every default is defined here, once; the CLI reads them.

Validation lives in ``__post_init__`` and raises :class:`UsageError` (never ``assert``,
which vanishes under ``python -O``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import re
from dataclasses import dataclass

from .errors import UsageError

MODELS = ("lstm", "rnn", "gru")
# How x_t enters the first layer. "onehot": the notes' model, W_xh x_t with x_t one-hot.
# "embedding": x_t -> E x_t, a learned D-vector, then W_ih: the same model with
# W_xh = W_ih E factored (rank <= D), which costs D instead of V multiply-adds per gate row.
# "auto": the embedding, at every vocabulary size. Measured (docs/large-vocabularies.md):
# at equal compute it reached a lower validation loss than one-hot on every text tried
# (65, 100, 170 and 560 distinct characters), and its step is the cheaper one.
INPUTS = ("auto", "onehot", "embedding")
AUTO_INPUT = "embedding"  # what "auto" resolves to, for every corpus
PRECISIONS = ("auto", "fp32", "bf16")
# The learning rate after warm-up: a half cosine, or a straight line ("budgeted training",
# Li et al. 2020), each down to lr * lr_min_ratio at the run's planned last step.
LR_SCHEDULES = ("cosine", "linear")


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _positive(name: str, value: int | float) -> None:
    if value is None or not math.isfinite(value) or value <= 0:
        raise UsageError(
            f"{name} must be a finite number greater than 0 (got {value})", _field(name)
        )


def _bad(flag: str, message: str) -> UsageError:
    return UsageError(message, _field(flag))


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _plain_fields(config: object) -> None:
    """Each field as the plain Python type its annotation names, before any value check.

    Callers sweep options with numpy (np.int64(3), np.float32(4e-3), np.linspace's floats):
    those become int and float here, so the checkpoint holds only plain data (its loader
    refuses anything else) and json can write the metrics. A bool is refused where a number
    belongs (True would train a 1-unit model), and text where a number belongs is named
    here rather than failing a comparison inside a check below.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        plain = plain_value(type(config), f.name, value)
        if plain is not value:
            object.__setattr__(config, f.name, plain)


def plain_value(cls: type, name: str, value: object) -> object:
    """`value` as field `name` of the config class `cls` holds it (see _plain_fields)."""
    annotation = next(f.type for f in dataclasses.fields(cls) if f.name == name)
    if value is None and annotation.endswith(" | None"):  # a string: see __future__
        return None
    return _plain("--" + name.replace("_", "-"), value, _KINDS[annotation.split(" | ")[0]])


def _plain(flag: str, value: object, kind: type) -> object:
    """`value` as a plain int, float, str or bool (see _plain_fields); UsageError if not one."""
    wanted = {int: "an integer", float: "a number", str: "a str", bool: "True or False"}[kind]
    is_bool = type(value).__name__ in ("bool", "bool_")  # Python's bool and numpy's
    if kind is bool:
        if is_bool:
            return bool(value)
        raise _bad(flag, f"{flag} must be True or False (got {value!r})")
    if is_bool:
        raise _bad(flag, f"{flag} must be {wanted}, not True or False (got {value!r})")
    if kind is str and isinstance(value, str):
        return value if type(value) is str else str(value)  # numpy's str_ too
    if kind is int and hasattr(type(value), "__index__"):  # numpy's integers
        try:
            return value if type(value) is int else operator.index(value)
        except TypeError:  # a float tensor has __index__ but refuses it
            pass
    if kind is not str and isinstance(value, numbers.Real):
        if kind is float:
            return value if type(value) in (int, float) else float(value)
        if math.isfinite(value) and float(value).is_integer():  # np.linspace gives 200.0
            return int(value)
        raise _bad(flag, f"{flag} must be a whole number (got {value!r})")
    raise _bad(flag, f"{flag} must be {wanted} (got {value!r} of type {type(value).__name__})")


# Seeds: torch.manual_seed takes any integer in [-2**63, 2**64); numpy's generators only
# non-negative ones. Each command documents and checks the range it can honour.
TRAIN_SEED_RANGE = (-(2**63), 2**64 - 1)
SAMPLE_SEED_RANGE = (0, 2**64 - 1)


def _check_seed(value: int | None, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if value is not None and not low <= value <= high:
        raise _bad(
            "--random-seed", f"--random-seed must be an integer from {low} to {high} (got {value})"
        )


@dataclass(frozen=True)
class ModelConfig:
    model: str = "lstm"  # recurrent cell: "lstm", "rnn" (tanh) or "gru"
    vocab_size: int = 0  # distinct characters in the corpus; set from the data, not by hand
    hidden_size: int = 256  # units per recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.2  # between layers and before the output layer; 0 turns it off
    # DropConnect on each W_hh while training (AWD-LSTM's weight drop): a fraction of the
    # recurrent connections, new each window; 0 turns it off
    weight_drop: float = 0.0
    # Embedding dropout while training: each character of the vocabulary is dropped from the
    # input (its x_t zeroed) for a whole window with this probability; 0 turns it off
    embed_dropout: float = 0.0
    # Variational (locked) dropout: the mask before the output layer is drawn once per
    # stream and window and held at every time step, instead of anew at each
    locked_dropout: bool = False
    input: str = "auto"  # "onehot", "embedding" or "auto" (by vocab_size); see INPUTS
    embedding_size: int = 128  # D, the width of E when input is "embedding"

    def __post_init__(self) -> None:
        _plain_fields(self)
        if self.model not in MODELS:
            raise _bad(
                "--model", f"unknown --model {self.model!r}: choose one of {', '.join(MODELS)}"
            )
        _positive("--hidden-size", self.hidden_size)
        _positive("--num-layers", self.num_layers)
        if not 0.0 <= self.dropout < 1.0:
            raise _bad("--dropout", f"--dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.weight_drop < 1.0:
            raise _bad("--weight-drop", f"--weight-drop must be in [0, 1) (got {self.weight_drop})")
        if not 0.0 <= self.embed_dropout < 1.0:
            raise _bad(
                "--embed-dropout", f"--embed-dropout must be in [0, 1) (got {self.embed_dropout})"
            )
        if self.vocab_size < 0:
            raise _bad("vocab_size", f"vocab_size must not be negative (got {self.vocab_size})")
        if self.input not in INPUTS:
            raise _bad(
                "--input", f"unknown --input {self.input!r}: choose one of {', '.join(INPUTS)}"
            )
        _positive("--embedding-size", self.embedding_size)
        if self.input == "auto" and self.vocab_size >= 2:
            # Decided once, when the corpus is known; the checkpoint stores the outcome.
            object.__setattr__(self, "input", AUTO_INPUT)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        # Checkpoints from before the input option have no "input" key: they are one-hot.
        d = {"input": "onehot", **d}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def describe_input(config: ModelConfig) -> str:
    """How x_t enters the first layer, in the notes' terms (for `info`)."""
    v, d = config.vocab_size, config.embedding_size
    rows = {"lstm": 4, "gru": 3, "rnn": 1}[config.model] * config.hidden_size
    if config.input == "embedding":
        return (
            f"learned embedding E ({d} x {v:,}): W_xh = W_ih E, factored; "
            f"weight_ih_l0 is W_ih ({rows} x {d}), embed.weight is E^T"
        )
    return f"one-hot x_t: W_xh x_t is column x_t of W_xh = weight_ih_l0 ({rows} x {v:,})"


@dataclass(frozen=True)
class TrainConfig:
    # data
    batch_size: int = 24  # parallel streams the training text is cut into
    seq_len: int = 64  # characters per truncated-BPTT window
    val_fraction: float = 0.1  # the last fraction of the text, held out for validation
    # Held-out characters each validation predicts, at most: a bound on its time on big
    # corpora (docs/corpora.md). Tiny Shakespeare's 111,538 are all used.
    val_chars: int = 500_000
    # optimisation
    lr: float = 4e-3  # peak Adam learning rate
    lr_schedule: str = "cosine"  # after warm-up: "cosine" or "linear" (LR_SCHEDULES)
    lr_min_ratio: float = 0.05  # the schedule decays to lr * lr_min_ratio
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    grad_clip: float = 1.0  # clip the global L2 norm of all gradients to this; 0 = off
    # decay of an exponential moving average of the weights, validated and saved in their
    # place (training/average.py); 0 = off, the weights as trained
    ema: float = 0.0
    precision: str = "auto"  # "fp32", "bf16" (autocast) or "auto" (bf16 where it is fast)
    # when to stop: whichever comes first; with none given, `epochs` falls back to DEFAULT_EPOCHS
    max_steps: int | None = None
    epochs: float | None = None
    time_limit: float | None = None  # seconds of this invocation's training, evals included
    # bookkeeping
    eval_every: int = 1000  # steps between validation passes (and last.pt saves)
    random_seed: int = 1337
    device: str = "auto"
    # CPU threads for torch's kernels; None: charrnn times its steps with one thread and
    # with all, keeps the faster and times again as the load changes (charrnn/threads.py)
    threads: int | None = None
    # characters of the sample drawn at each evaluation (same seed each time); 0 = none
    sample_length: int = 200

    def __post_init__(self) -> None:
        _plain_fields(self)
        _positive("--batch-size", self.batch_size)
        _positive("--seq-len", self.seq_len)
        _positive("--lr", self.lr)
        _positive("--eval-every", self.eval_every)
        _positive("--val-chars", self.val_chars)
        if not 0.0 < self.val_fraction < 1.0:  # also refuses nan
            raise _bad(
                "--val-fraction",
                f"--val-fraction must be between 0 and 1 (got {self.val_fraction})",
            )
        if not math.isfinite(self.grad_clip) or self.grad_clip < 0:
            raise _bad(
                "--grad-clip",
                f"--grad-clip must be >= 0; 0 turns clipping off (got {self.grad_clip})",
            )
        if not 0.0 <= self.ema < 1.0:  # also refuses nan
            raise _bad(
                "--ema", f"--ema must be in [0, 1), e.g. 0.999; 0 turns it off (got {self.ema})"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise _bad("lr_min_ratio", f"lr_min_ratio must be in [0, 1] (got {self.lr_min_ratio})")
        if self.warmup_steps < 0:
            raise _bad("warmup_steps", f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _bad(
                "--lr-schedule",
                f"unknown --lr-schedule {self.lr_schedule!r}: choose one of "
                f"{', '.join(LR_SCHEDULES)}",
            )
        if self.precision not in PRECISIONS:
            raise _bad(
                "--precision",
                f"unknown --precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}",
            )
        _check_seed(self.random_seed, TRAIN_SEED_RANGE)
        if self.sample_length < 0:
            raise _bad(
                "--sample-length",
                f"--sample-length must be >= 0; 0 turns it off (got {self.sample_length})",
            )
        for name in ("max_steps", "epochs", "time_limit", "threads"):
            value = getattr(self, name)
            if value is not None:
                _positive("--" + name.replace("_", "-"), value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        # Checkpoints from before --ema have no "ema" key: they trained without an average.
        d = {"ema": 0.0, **d}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# With no --max-steps, --epochs or --time-limit a run stops after this many epochs.
DEFAULT_EPOCHS = 10.0

# The limits: whichever comes first ends a run; given on --resume, they replace the old set.
LIMIT_OPTIONS = ("max_steps", "epochs", "time_limit")
# The only options a resumed run may change; everything else comes from the checkpoint.
# Like the device, the precision belongs to the machine: a run moves between machines.
RESUMABLE_OPTIONS = (
    *LIMIT_OPTIONS,
    "eval_every",
    "device",
    "precision",
    "sample_length",
    "threads",
)


# Bounds that keep `sample` from promising what it cannot do: a length no run will reach
# (a trillion characters), and what may be held for the samples printed after the first.
MAX_SAMPLE_LENGTH = 10**12
MAX_NUM_SAMPLES = 65536
MAX_HELD_CHARS = 2 * 10**8


@dataclass(frozen=True)
class SampleConfig:
    length: int = 500  # characters generated after the seed; 0 = no end (one sample only)
    temperature: float = 0.8  # logits are divided by this; 0 = always the most likely char
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    num_samples: int = 1
    random_seed: int | None = None  # None: a fresh sample each time
    stop_at: str | None = None  # end each sample right after it generates this text

    def __post_init__(self) -> None:
        _plain_fields(self)
        if not 0 <= self.length <= MAX_SAMPLE_LENGTH:
            raise _bad(
                "--length", f"--length must be from 0 to {MAX_SAMPLE_LENGTH:,} (got {self.length})"
            )
        if self.temperature < 0 or math.isnan(self.temperature):
            raise _bad("--temperature", f"--temperature must be >= 0 (got {self.temperature})")
        if self.top_k is not None and self.top_k < 1:
            raise _bad("--top-k", f"--top-k must be at least 1 (got {self.top_k})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise _bad("--top-p", f"--top-p must be in (0, 1] (got {self.top_p})")
        _positive("--num-samples", self.num_samples)
        if self.num_samples > MAX_NUM_SAMPLES:
            raise _bad(
                "--num-samples",
                f"--num-samples must be at most {MAX_NUM_SAMPLES:,} (got {self.num_samples}); "
                "run the command several times for more",
            )
        held = (self.num_samples - 1) * self.length
        if held > MAX_HELD_CHARS:
            # Sample 0 streams; the others are held until it ends (see sample.generate).
            raise _bad(
                "--num-samples",
                f"--num-samples {self.num_samples} x --length {self.length:,} would hold "
                f"{held:,} characters in memory (at most {MAX_HELD_CHARS:,}): lower either, "
                "or run one sample at a time",
            )
        _check_seed(self.random_seed, SAMPLE_SEED_RANGE)
        if self.length == 0 and self.num_samples > 1:
            raise _bad(
                "--num-samples",
                "--length 0 streams one sample without end, so the others would never print: "
                "drop --num-samples, or give a --length",
            )
        if self.stop_at is not None and not self.stop_at:
            raise _bad("--stop-at", "--stop-at must not be empty: give the text to stop at")


# One part of a duration: a number and an optional unit; '1h30m' and '1h 30m' are two parts.
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|hr|d)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s' / '5m' / '1.5h' / '1h30m' / '120' (seconds) -> seconds. Only the last part of a
    compound duration may go without a unit (seconds): '1h30' is not guessed at."""
    parts = list(_DURATION_PART.finditer(text))
    ends = [0, *(p.end() for p in parts)]
    whole = (
        bool(parts)
        and all(p.start() == end for p, end in zip(parts, ends[:-1], strict=True))
        and ends[-1] == len(text)
    )
    if (
        not whole
        or any(p.group(2) is None for p in parts[:-1])
        or (len(parts) > 1 and parts[-1].group(2) is None)
    ):
        raise _bad(
            "--time-limit",
            f"--time-limit {text!r} is not a duration: write e.g. 90s, 5m, 1h or 1h30m "
            "(a bare number is seconds)",
        )
    seconds = sum(float(p.group(1)) * _UNIT_SECONDS[(p.group(2) or "s").lower()] for p in parts)
    if seconds <= 0:
        raise _bad("--time-limit", f"--time-limit must be greater than 0 (got {text!r})")
    return seconds
