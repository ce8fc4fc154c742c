"""Loss curves of training runs, read from their metrics.jsonl, and drawn to a file.

The terminal plot is drawn by the CLI (plotext); a PNG or SVG file by matplotlib, here.
Both are optional extras: `pip install 'charrnn[plot]'`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from ..errors import MissingExtraError, OutputError, UsageError
from ..rundir import METRICS

LN2 = math.log(2.0)
PLOT_EXTRA = "pip install 'charrnn[plot]'"
# Which line is which: the held-out text scored at each evaluation, and the loss of the
# training windows themselves, each point the mean over the steps since the one before.
VAL_LABEL = "validation (held-out text, at each evaluation)"
TRAIN_LABEL = "training (mean over the steps since the point before)"


@dataclass
class Curve:
    name: str
    steps: list[int]
    val_loss: list[float]  # nats/char
    # Training loss: the metrics' training-loss lines (every few dozen steps) where the
    # run wrote them, else (older runs) the mean since the last evaluation, at each one.
    train_steps: list[int]
    train_loss: list[float]


def read_run(path: str) -> Curve:
    """A run folder (--out of `charrnn train`) or a metrics.jsonl file."""
    file = os.path.join(path, METRICS) if os.path.isdir(path) else path
    name = os.path.basename(
        os.path.normpath(path if os.path.isdir(path) else os.path.dirname(file) or ".")
    )
    if not os.path.exists(file):
        raise UsageError(
            f"{path!r} has no {METRICS}: give a run folder (the --out of charrnn train) "
            "or its metrics.jsonl"
        )
    curve = Curve(name or file, [], [], [], [])
    often: tuple[list[int], list[float]] = ([], [])  # the training-loss lines
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if "val_loss" not in record and "train_loss" in record:
                        often[0].append(int(record["step"]))
                        often[1].append(float(record["train_loss"]))
                        continue
                    step, val = int(record["step"]), float(record["val_loss"])
                except (ValueError, KeyError, TypeError):
                    raise UsageError(
                        f"{file}:{number} is not a charrnn metrics line (JSON with step and "
                        "val_loss)"
                    ) from None
                curve.steps.append(step)
                curve.val_loss.append(val)
                if record.get("train_loss") is not None:
                    curve.train_steps.append(step)
                    curve.train_loss.append(float(record["train_loss"]))
    except OSError as e:
        raise UsageError(f"cannot read {file}: {e.strerror or e}") from None
    if often[0]:
        curve.train_steps, curve.train_loss = often
    if not curve.steps:
        raise UsageError(f"{file} holds no evaluations yet: plot it after the first one")
    return curve


def unique_names(curves: list[Curve]) -> None:
    """Runs given as a/run and b/run would share a legend label: number them."""
    seen: dict[str, int] = {}
    for c in curves:
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name} ({seen[c.name]})"


def write_figure(curves: list[Curve], path: str) -> None:
    """Training and validation loss against steps, one colour per run, to PNG or SVG."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise UsageError(f"--out {path!r}: write a .png or .svg file")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no window, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError(f"writing {ext} files needs matplotlib: {PLOT_EXTRA}") from None
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for k, c in enumerate(curves):
        colour = f"C{k % 10}"
        label = f"{c.name} {VAL_LABEL}"
        ax.plot(c.steps, c.val_loss, color=colour, marker="o", ms=3, label=label)
        if c.train_loss:
            label = f"{c.name} {TRAIN_LABEL}"
            ax.plot(c.train_steps, c.train_loss, color=colour, ls="--", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    bits = ax.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
    bits.set_ylabel("bits/char")
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        fig.savefig(path)
    except OSError as e:
        raise OutputError(
            f"cannot write {path} ({e.strerror or e}): choose a writable path"
        ) from None
    finally:
        plt.close(fig)
