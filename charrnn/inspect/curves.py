"""Loss curves of training runs, read from their metrics.jsonl, and drawn to a file.

The terminal plot is drawn by the CLI (plotext); a PNG or SVG file by matplotlib, here.
Both are optional extras: `pip install 'charrnn[plot]'`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field

from ..errors import CharRNNError, MissingExtraError, OutputError, UsageError
from ..rundir import METRICS

LN2 = math.log(2.0)
PLOT_EXTRA = "pip install 'charrnn[plot]'"
# Which line is which: the held-out text scored at each evaluation, and the loss of the
# training windows themselves, each point the mean over the steps since the one before.
VAL_LABEL = "validation (held-out text, at each evaluation)"
TRAIN_LABEL = "training (mean over the steps since the point before)"


class MetricsError(CharRNNError):
    """A file given to `plot` is not a charrnn metrics.jsonl (exit 1: the file's content)."""


@dataclass
class Curve:
    name: str
    steps: list[int]
    val_loss: list[float]  # nats/char; NaN or inf where an evaluation diverged
    # Training loss: the metrics' training-loss lines (every few dozen steps) where the
    # run wrote them, else (older runs) the mean since the last evaluation, at each one.
    train_steps: list[int]
    train_loss: list[float]
    warnings: list[str] = field(default_factory=list)  # lines skipped, values not drawn

    def finite(self) -> tuple[list[int], list[float], list[int], list[float]]:
        """The points a plot can draw: (steps, val_loss, train_steps, train_loss), each
        without its non-finite values."""
        val = [(s, v) for s, v in zip(self.steps, self.val_loss, strict=True) if math.isfinite(v)]
        train = [
            (s, v)
            for s, v in zip(self.train_steps, self.train_loss, strict=True)
            if math.isfinite(v)
        ]
        return (
            [s for s, _ in val],
            [v for _, v in val],
            [s for s, _ in train],
            [v for _, v in train],
        )


def _record(line: str) -> tuple[int, float | None, float | None]:
    """(step, val_loss, train_loss) of one metrics line: an evaluation, or a training-loss
    line (val_loss None); ValueError if it is neither."""
    try:
        record = json.loads(line)
        train = record.get("train_loss")
        train = None if train is None else float(train)
        if "val_loss" not in record and train is not None:
            return int(record["step"]), None, train
        return int(record["step"]), float(record["val_loss"]), train
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise ValueError(line) from None


def _not_metrics(file: str, why: str, checkpoint: bool = False) -> MetricsError:
    hint = "give a run folder (the --out of charrnn train) or its metrics.jsonl"
    if checkpoint:
        folder = os.path.dirname(file) or "."
        hint = f"to plot a checkpoint's run, give its folder: charrnn plot {folder}"
    return MetricsError(f"{file} is not a charrnn metrics.jsonl ({why}): {hint}")


def read_run(path: str) -> Curve:
    """A run folder (--out of `charrnn train`) or a metrics.jsonl file.

    A last line cut short (a run writing it now, a writer killed mid-line; also such a
    line that a resumed run then wrote after) is skipped with a warning in `warnings`:
    every other line must be a metrics record."""
    if not os.path.exists(path):
        raise MetricsError(
            f"{path!r} not found: give a run folder (the --out of charrnn train) or its {METRICS}"
        )
    file = os.path.join(path, METRICS) if os.path.isdir(path) else path
    folder = path if os.path.isdir(path) else os.path.dirname(file) or "."
    name = os.path.basename(os.path.abspath(folder))
    if os.path.basename(file) != METRICS:  # e.g. lstm.jsonl: named by the file itself
        name = os.path.splitext(os.path.basename(file))[0]
    if not os.path.exists(file):
        raise UsageError(
            f"{path!r} has no {METRICS}: give a run folder (the --out of charrnn train) "
            "or its metrics.jsonl"
        )
    curve = Curve(name or file, [], [], [], [])
    _parse(file, _read_text(file), curve)
    if not curve.steps:
        raise MetricsError(f"{file} holds no evaluations yet: plot it after the first one")
    _note_non_finite(file, curve)
    return curve


def _read_text(file: str) -> str:
    """The file's text; MetricsError for a checkpoint, binary data or text not in UTF-8."""
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise MetricsError(f"cannot read {file}: {e.strerror or e}") from None
    if raw.startswith(b"PK\x03\x04") or file.endswith(".pt"):  # torch.save writes a zip
        raise _not_metrics(file, "it looks like a checkpoint", checkpoint=True)
    if b"\0" in raw[:4096]:
        raise _not_metrics(file, "binary data")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_metrics(file, f"not UTF-8 text at byte offset {e.start}") from None


def _parse(file: str, content: str, curve: Curve) -> None:
    """The records of a metrics file into `curve`: evaluations, and training-loss lines
    (which, where a run wrote them, replace the evaluations' train_loss)."""
    often: tuple[list[int], list[float]] = ([], [])  # the training-loss lines
    lines = content.split("\n")  # the last piece is "" when the file ends in a newline
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it: the writer has not finished it
        try:
            step, val, train = _record(line)
        except ValueError:
            # A torn line that a resumed run wrote after: the whole record starts inside it.
            tail = line.rfind('{"')
            try:
                step, val, train = _record(line[tail:]) if tail > 0 else _record("")
            except ValueError:
                if not torn:
                    raise _not_metrics(
                        file, f"line {number} is not JSON with step and val_loss"
                    ) from None
                curve.warnings.append(
                    f"{file}:{number}: skipped a line cut short ({len(line)} characters "
                    "without a newline: a run writing it, or a writer stopped mid-line)"
                )
                continue
            curve.warnings.append(
                f"{file}:{number}: skipped the start of a line cut short before the record "
                "written after it"
            )
        if val is None:  # a training-loss line
            often[0].append(step)
            often[1].append(train)
            continue
        curve.steps.append(step)
        curve.val_loss.append(val)
        if train is not None:
            curve.train_steps.append(step)
            curve.train_loss.append(train)
    if often[0]:
        curve.train_steps, curve.train_loss = often


def _note_non_finite(file: str, curve: Curve) -> None:
    for label, steps, values in (
        ("validation", curve.steps, curve.val_loss),
        ("training", curve.train_steps, curve.train_loss),
    ):
        bad = [(s, v) for s, v in zip(steps, values, strict=True) if not math.isfinite(v)]
        if bad:
            where = ", ".join(f"step {s} ({v})" for s, v in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            curve.warnings.append(
                f"{file}: the {label} loss is not finite at {where}{more}: left out of the plot"
            )


def unique_names(curves: list[Curve]) -> None:
    """Runs given as a/run and b/run would share a legend label: number them."""
    seen: dict[str, int] = {}
    for c in curves:
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name} ({seen[c.name]})"


def write_figure(curves: list[Curve], path: str) -> list[str]:
    """Training and validation loss against steps, one colour per run, to PNG or SVG.
    Returns matplotlib's warnings as lines (a library prints nothing)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise UsageError(f"--out {path!r}: write a .png or .svg file")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no window, no display needed
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise MissingExtraError(f"writing {ext} files needs matplotlib: {PLOT_EXTRA}") from None
    many = len(curves) > 10  # the ten tab colours would repeat: spread a colormap instead
    colours = (
        [matplotlib.colormaps["viridis"](k / (len(curves) - 1)) for k in range(len(curves))]
        if many
        else [f"C{k}" for k in range(len(curves))]
    )
    # One legend entry per run (its colour) and two for the line styles, beside the axes:
    # a legend of 2 entries per run inside them covered the curves of 40 runs.
    rows = 24
    columns = max(1, math.ceil((len(curves) + 2) / rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig, ax = plt.subplots(figsize=(8 + 1.8 * columns, 4.8), layout="constrained")
        try:
            handles = []
            for c, colour in zip(curves, colours, strict=True):
                steps, val, train_steps, train = c.finite()  # NaN/inf: said in c.warnings
                marker = None if many else "o"
                (line,) = ax.plot(steps, val, color=colour, marker=marker, ms=3, label=c.name)
                handles.append(line)
                if train:
                    ax.plot(train_steps, train, color=colour, ls="--")
            handles += [
                Line2D([], [], color="grey", marker="o", ms=3, label=VAL_LABEL),
                Line2D([], [], color="grey", ls="--", label=TRAIN_LABEL),
            ]
            ax.set_xlabel("step")
            ax.set_ylabel("loss (nats/char)")
            bits = ax.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
            bits.set_ylabel("bits/char")
            ax.grid(alpha=0.3)
            fig.legend(
                handles=handles,
                loc="outside right upper",
                ncols=columns,
                fontsize="small" if many else None,
                frameon=False,
            )
            fig.savefig(path)
        except OSError as e:
            raise OutputError(
                f"cannot write {path} ({e.strerror or e}): choose a writable path"
            ) from None
        finally:
            plt.close(fig)
    return [f"matplotlib: {w.message}" for w in caught]


def summary(c: Curve) -> str:
    """One line per run under a plot: its evaluations, last and best validation loss."""

    def loss(v: float) -> str:
        return f"{v:.4f} nats/char ({v / LN2:.3f} bits/char)" if math.isfinite(v) else f"{v}"

    finite = [v for v in c.val_loss if math.isfinite(v)]
    best = f"best {loss(min(finite))}" if finite else "no finite validation loss"
    last_train = f"; last train {c.train_loss[-1]:.4f}" if c.train_loss else ""
    return (
        f"{c.name}: {len(c.steps)} evaluations to step {c.steps[-1]}; last val "
        f"{loss(c.val_loss[-1])}, {best}{last_train}"
    )
