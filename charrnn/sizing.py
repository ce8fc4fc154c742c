"""Choosing the model for a corpus and a budget, when the user names no size.

The rule is fitted to a sweep on a 2-core CPU (bench/sweep.py, docs/choosing-a-model.md):
held-out loss of LSTMs from 1 x 64 to 1 x 1024 and 3 x 256 on prose and code of 150 KB to
10 MB, for budgets of 1 to 10 minutes (and, held out of the fit, 30 minutes on 10 MB of
code: the law's ranking held there, its predicted losses were 0.1 too high). Two fitted
laws, both plain arithmetic:

- what a character costs: seconds per character = layers x OVERHEAD + PER_PARAM x
  (P + H V), P the recurrent weights (sum over layers of 4H(in + H)), H V the output
  layer's. It is scaled to this device by timing the default size for a few steps before
  the run (charrnn/training/choose.py);
- what a model reaches: loss = E + A / P_eff^ALPHA + B / D_eff^BETA, where P_eff counts
  the first layer's recurrent weights and UPPER of each weight above it, D is the
  characters trained on and D_eff = N R (1 - exp(-D / (N R))) discounts repeated epochs of
  a text of N characters (the data-constrained form of Muennighoff et al., 2023). E, the
  text's own entropy, does not change which size wins, so the choice needs no guess of it.

With a time budget every size gets the characters it trains in that time, and the lowest
predicted loss wins (among sizes the budget gives at least MIN_CHOSEN_STEPS steps).
With only --epochs/--max-steps (or neither: DEFAULT_EPOCHS) the characters are fixed and
the time is not: by the law a larger model always learns more from them, but it would
make the run take longer than the user expects, so the default size stays and only
dropout is chosen. Dropout follows the epochs the budget buys (DROPOUT_BY_EPOCHS).
Library code: no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

# Candidate sizes (hidden units, layers), cheapest first. 2 x 768 and 2 x 1024 were timed
# but not trained: their loss comes from the fitted law (extrapolated). Left out: 2 x 384
# (it never won, and ran 22% slower than the cost law says) and three layers (3 x 256 lost
# by 0.08 to 1 x 1024 in the same 10 minutes; the law ranks deeper stacks lower still).
SIZES = (
    (64, 1), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2), (1024, 1), (768, 2),
    (1024, 2),
)  # fmt: skip
DEFAULT_SIZE = (256, 2)  # ModelConfig's defaults: the size timed on this device
EMBEDDING = 128  # the first layer's input width (ModelConfig.embedding_size)

# Cost law, fitted to bench/sweep.py speeds (seconds per character on the sweep's CPU,
# Tiny Shakespeare's 65 distinct characters).
SWEPT_VOCAB = 65
OVERHEAD = 4.10e-6  # per layer: the step's per-layer work that does not grow with width
PER_PARAM = 4.33e-11  # per weight

# Loss law, fitted by `bench/sweep.py fit` (nats/char; P and D counted in millions).
A, ALPHA = 0.0564, 0.516
B, BETA = 0.1954, 0.853
R = 1.81  # epochs of a text at which repeating it has given 1 - 1/e of its worth
UPPER = 0.343  # what a weight above the first layer is worth, against one in it
# What the sweep reached: (kind of text, training characters, characters the default size
# trains in the budget, the best validation loss of the best size). `--dry-run` quotes the
# nearest point of each kind as the loss to expect (`bench/sweep.py fit` prints these rows).
SWEPT = (
    ("prose", 18_000, 1_205_000, 1.8139),
    ("prose", 135_000, 1_807_000, 1.5073),
    ("code", 135_000, 1_807_000, 1.0423),
    ("prose", 900_000, 6_025_000, 1.4119),
    ("code", 900_000, 1_807_000, 1.2930),
    ("code", 9_001_260, 4_820_000, 1.3583),
    ("prose", 900_000, 12_049_000, 1.3775),
    ("code", 9_001_260, 36_148_000, 1.2075),  # held out of the fit (held-out.jsonl)
)

# (epochs in the budget, dropout): 0.1 beat 0.2 at about 3 epochs, 0.2 beat 0.1 at 10 and
# 0.35 at 8 to 12; under one epoch no dropout won once and lost once (docs/choosing-a-model.md).
DROPOUT_BY_EPOCHS = ((6.0, 0.1), (math.inf, 0.2))
# A size is chosen only if the budget gives it this many steps: the law counts characters,
# and on a small text it counts them used up long before a large model has had the updates
# it needs (in the sweep sizes given 338 to 508 steps lost; 534 and more could win).
MIN_CHOSEN_STEPS = 500
# Fewer steps than this teach no model more than the characters' frequencies.
MIN_STEPS = 200


def recurrent_params(hidden: int, layers: int) -> int:
    """P: the LSTM's input-to-hidden and hidden-to-hidden weights, all layers."""
    return sum(4 * hidden * ((EMBEDDING if i == 0 else hidden) + hidden) for i in range(layers))


def seconds_per_char(hidden: int, layers: int, vocab: int = SWEPT_VOCAB) -> float:
    """The cost law's seconds per training character on the sweep's CPU: the recurrent
    weights and the output layer's (hidden x vocab), each used once per character."""
    return layers * OVERHEAD + PER_PARAM * (recurrent_params(hidden, layers) + hidden * vocab)


def predicted_loss(hidden: int, layers: int, chars: float, train_chars: int) -> float:
    """The loss law without E: what the size adds above the text's own entropy. The
    weights of the layers above the first count UPPER of theirs: in the sweep one wide
    layer learned more per second than a stack of narrower ones of the same weights."""
    first = recurrent_params(hidden, 1)
    p = (first + UPPER * (recurrent_params(hidden, layers) - first)) / 1e6
    pool = train_chars * R
    effective = pool * -math.expm1(-chars / pool) / 1e6
    return A / p**ALPHA + B / max(effective, 1e-9) ** BETA


def dropout_for(epochs: float) -> float:
    return next(d for bound, d in DROPOUT_BY_EPOCHS if epochs <= bound)


@dataclass(frozen=True)
class Budget:
    """What a run may spend: seconds left after the timing (None: no time limit) and
    characters (None: no step or epoch limit). One of them is set."""

    seconds: float | None
    chars: float | None
    label: str  # as the user gave it, for the start line: "5m", "10 epochs", "3000 steps"
    spent: float = 0.0  # seconds of the time limit gone before the choice (reading, timing)


@dataclass(frozen=True)
class Choice:
    hidden_size: int
    num_layers: int
    dropout: float | None  # None: the user's --dropout stands
    chars_per_sec: float | None  # expected for the chosen size here; None: not timed
    chars: float  # characters it trains on within the budget
    epochs: float
    steps: int
    predicted: float  # the loss law's excess over E, for the expected range
    reason: str  # the start line's parenthesis
    ranking: tuple[tuple[str, float], ...]  # (size, predicted excess), best first
    cell: str = "lstm"  # the recurrent cell (--model): the rule was fitted to LSTMs
    # (kind, loss, its training characters, its budget in the default's characters): the
    # sweep's nearest result for each kind of text, the loss to expect from a text like it
    expected: tuple[tuple[str, float, int, int], ...] = ()

    def model_options(self) -> dict:
        """The ModelConfig fields the choice sets."""
        chosen = {"hidden_size": self.hidden_size, "num_layers": self.num_layers}
        return chosen if self.dropout is None else {**chosen, "dropout": self.dropout}

    def to_dict(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "chars_per_sec": None if self.chars_per_sec is None else round(self.chars_per_sec, 1),
            "epochs": round(self.epochs, 3),
            "steps": self.steps,
            "reason": self.reason,
            "cell": self.cell,
        }


def choose(
    train_chars: int,
    budget: Budget,
    speeds: dict[tuple[int, int], float],
    chars_per_step: int,
    dropout_given: bool,
    where: str,
    named: tuple[int, int] | None = None,
) -> Choice:
    """The size (and dropout) for `train_chars` of text within `budget`. `speeds`:
    characters per second of each candidate on this device. UsageError when the budget
    cannot train even the fastest size for MIN_STEPS steps. With `named` (the user's size,
    its speed in `speeds`), only what it will do: nothing is chosen."""
    if named is not None:
        size = named
    elif budget.seconds is not None:
        _check_enough(budget, speeds, chars_per_step)
        size = _by_time(budget, speeds, train_chars, chars_per_step)
    else:  # the characters are fixed, the time is not: keep the default's time
        size = DEFAULT_SIZE if DEFAULT_SIZE in speeds else max(speeds, key=speeds.get)
    chars = _chars(size, budget, speeds)
    epochs = chars / train_chars
    ranking = sorted(
        (predicted_loss(*s, _chars(s, budget, speeds), train_chars), s) for s in speeds
    )
    return Choice(
        hidden_size=size[0],
        num_layers=size[1],
        dropout=None if dropout_given or named else dropout_for(epochs),
        chars_per_sec=speeds[size],
        chars=chars,
        epochs=epochs,
        steps=int(chars // chars_per_step),
        predicted=predicted_loss(*size, chars, train_chars),
        reason=_reason(named, budget, train_chars, where),
        ranking=tuple((f"{n} x {h}", loss) for loss, (h, n) in ranking),
        expected=nearest_swept(train_chars, _chars(DEFAULT_SIZE, budget, speeds))
        if DEFAULT_SIZE in speeds
        else (),
    )


def nearest_swept(train_chars: int, default_chars: float) -> tuple:
    """For each kind of text swept, the result nearest (in log corpus size and log budget)
    to this run: what a text like it reached with a corpus and budget like this one's. A
    text's own entropy sets its level, which no rule can know before training on it."""
    found = []
    for kind in sorted({row[0] for row in SWEPT}):
        rows = [row for row in SWEPT if row[0] == kind]
        near = min(rows, key=lambda row: math.hypot(math.log(row[1] / train_chars),
                                                    math.log(row[2] / default_chars)))  # fmt: skip
        found.append((kind, near[3], near[1], near[2]))
    return tuple(found)


def _reason(named: tuple | None, budget: Budget, train_chars: int, where: str) -> str:
    what = f"{short_count(train_chars)} characters and {budget.label} on {where}"
    if named:
        return f"named; {what}"
    if budget.seconds is None:
        return f"the default size, dropout for {what}; a --time-limit lets charrnn size it"
    return f"chosen for {what}"


def _chars(size: tuple[int, int], budget: Budget, speeds: dict) -> float:
    by_time = math.inf if budget.seconds is None else budget.seconds * speeds[size]
    return min(by_time, math.inf if budget.chars is None else budget.chars)


def _by_time(budget: Budget, speeds: dict, train_chars: int, per_step: int) -> tuple[int, int]:
    def chars(size: tuple[int, int]) -> float:
        return _chars(size, budget, speeds)

    allowed = [s for s in speeds if chars(s) >= MIN_CHOSEN_STEPS * per_step]
    allowed = allowed or [max(speeds, key=speeds.get)]  # the fastest, if none gets enough
    return min(allowed, key=lambda s: predicted_loss(*s, chars(s), train_chars))


def _check_enough(budget: Budget, speeds: dict, chars_per_step: int) -> None:
    """A time limit that leaves the fastest size fewer than MIN_STEPS is refused: no size
    could learn in it. (Steps and epochs are the user's to count: any number is trained.)"""
    fastest = max(speeds.values())
    need = MIN_STEPS * chars_per_step
    if budget.seconds is not None and budget.seconds * fastest < need:
        # what went before the choice, the steps, and as much again for validation and saves
        enough = math.ceil(budget.spent + 2 * need / fastest + 5)
        raise UsageError(
            f"--time-limit {budget.label} leaves too little time to train any model here "
            f"(reading the text and timing this device took {budget.spent:.0f}s; "
            f"{MIN_STEPS} steps of the smallest size take {need / fastest:.0f}s more): give "
            f"at least --time-limit {enough}s, or name the size with --hidden-size/--num-layers"
        )


def short_count(count: float) -> str:
    """1,807,000 -> "1.81M", 135,000 -> "135K": counts in the start line and --dry-run."""
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:g}"
