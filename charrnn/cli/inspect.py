"""The commands that look inside: plot, neurons, gradients, novelty.

Parse options, call the library in charrnn.inspect, render with rich and plotext. Results
are data and go to stdout; progress and notices go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator

import numpy as np
import torch
import typer
from rich.color import Color
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..corpus import Text as Passage
from ..errors import CorpusError, MissingExtraError, OutputError, UsageError
from ..inspect import curves, gradients, neurons, novelty, page
from ..sources import STDIN, STDIN_NAME, read_all
from ..vocab import describe_chars, encode_in
from .app import app
from .streams import err, printing, warn

out = Console(highlight=False, soft_wrap=True)
PLOT_EXTRA = curves.PLOT_EXTRA
SHOW_CHARS = 300  # of the longest copied substring, in the table view
MAX_LEGEND_RUNS = 6  # a terminal plot labels at most this many runs


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on a terminal; silent in logs and pipes."""
    if not err.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn(label),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    with bar:
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _plotext():
    try:
        import plotext
    except ImportError:
        raise MissingExtraError(f"terminal plots need plotext: {PLOT_EXTRA}") from None
    plotext.clear_figure()
    # The terminal's own background and text colours: the default theme paints a white
    # canvas, glaring in a dark terminal. Only the lines keep their colours.
    plotext.canvas_color("default")
    plotext.axes_color("default")
    plotext.ticks_color("default")
    return plotext


def _plot_text(plt) -> str:
    width = min(100, max(40, out.width - 2)) if out.is_terminal else 90
    plt.plotsize(width, 22)
    text = plt.build()
    return text if out.is_terminal else plt.uncolorize(text)


def _read(path: str, encoding: str, role: str, if_empty: str) -> Passage:
    """One text read whole, in this command's words: read_text's would call a TEXT or
    SAMPLE "corpus" and give training advice. `role` "corpus" is for novelty's --corpus,
    the training text itself."""
    content, warnings = read_all(path, encoding, role)
    name = STDIN_NAME if path == STDIN else path
    if not content:
        label = f"corpus {name}" if role == "corpus" else name
        raise CorpusError(f"{label} is empty: {if_empty}")
    return Passage(text=content, name=name, warnings=warnings)


def _model_and_ids(checkpoint: str, file: str, encoding: str):
    ckpt = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(ckpt, checkpoint)
    text = _read(file, encoding, "text", "give a text to run the model over")
    for w in text.warnings:
        warn(w)
    ids, missing = encode_in(vocab, text.text)
    if missing:
        raise UsageError(
            f"{text.name} has characters the model never saw: {describe_chars(missing)}; "
            "give a text made of its vocabulary (`charrnn info` lists it)"
        )
    return model, text, ids


# --------------------------------------------------------------------------- plot


@app.command("plot")
def plot_cmd(
    runs: list[str] = typer.Argument(
        ..., help="Run folders (--out of train) or metrics.jsonl files."
    ),
    out_file: str = typer.Option(None, "--out", "-o", help="Write FILE.png or FILE.svg instead."),
) -> None:
    """Training and validation loss against steps; several runs are drawn together."""
    printing(lambda: _plot(runs, out_file))


def _plot(runs: list[str], out_file: str | None) -> None:
    loaded = [curves.read_run(r) for r in runs]
    curves.unique_names(loaded)
    for c in loaded:
        for w in c.warnings:
            warn(w)
    if out_file:
        for w in curves.write_figure(loaded, out_file):
            warn(w)
        err.print(f"wrote {out_file}")
        return
    plt = _plotext()
    drawn = 0
    labelled = len(loaded) <= MAX_LEGEND_RUNS  # more would cover the plot
    for c in loaded:
        steps, val, train_steps, train = c.finite()  # plotext cannot place NaN or inf
        if val:
            label = f"{c.name} {curves.VAL_LABEL}" if labelled else None
            plt.plot(steps, val, label=label, marker="braille")
        if train:
            label = f"{c.name} {curves.TRAIN_LABEL}" if labelled else None
            plt.plot(train_steps, train, label=label, marker="dot")
        drawn += len(val) + len(train)
    if not labelled:
        warn(
            f"{len(loaded)} runs: too many to label in the terminal (the summary lines below "
            "name them); --out FILE.png draws a legend beside the plot"
        )
    if drawn:
        plt.title("loss in nats/char (bits/char = nats/char / 0.693)")
        plt.xlabel("step")
        out.print(Text.from_ansi(_plot_text(plt)) if out.is_terminal else _plot_text(plt))
    else:
        warn("no finite loss to draw: every evaluation diverged (NaN or inf)")
    for c in loaded:
        out.print(curves.summary(c))


# ------------------------------------------------------------------------ neurons


def _parse_unit(spec: str, rec: neurons.Recording) -> tuple[int, str, int]:
    parts = spec.split(":")
    states = neurons.STATES[rec.kind]
    try:
        layer, state, index = int(parts[0]), parts[1], int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise UsageError(f"--unit {spec!r} is not LAYER:STATE:INDEX, e.g. --unit 0:c:17") from None
    if not 0 <= layer < rec.num_layers:
        raise UsageError(
            f"--unit layer {layer} does not exist: this model has layers 0..{rec.num_layers - 1}"
        )
    if state not in states:
        raise UsageError(f"--unit state {state!r}: this {rec.kind} has {', '.join(states)}")
    if not 0 <= index < rec.hidden_size:
        raise UsageError(
            f"--unit index {index} is out of range: units are 0..{rec.hidden_size - 1}"
        )
    return layer, state, index


def _unit_colour(value: float, scale: float) -> Color:
    """Blue for negative, white for 0, red for positive (truecolor; rich downgrades it)."""
    a = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    target = (215, 48, 39) if value >= 0 else (38, 110, 210)
    r, g, b = (round(255 + (t - 255) * a) for t in target)
    return Color.from_rgb(r, g, b)


def _show_unit(rec: neurons.Recording, layer: int, state: str, index: int) -> None:
    values = rec.unit(layer, state, index)
    if out.color_system is None or not out.is_terminal:
        # No colour here (a pipe, a file, NO_COLOR): one character and its value a line.
        rows = (
            f"{t}\t{json.dumps(ch, ensure_ascii=False)}\t{v:.4f}\n"
            for t, (ch, v) in enumerate(zip(rec.text, values, strict=True))
        )
        sys.stdout.write("position\tchar\tvalue\n" + "".join(rows))
        return
    scale = float(np.abs(values).max())
    text = Text()
    for ch, v in zip(rec.text, values, strict=True):
        style = Style(bgcolor=_unit_colour(float(v), scale), color="black")
        text.append("↵\n" if ch == "\n" else ch, style=style)
    out.print(text)
    err.print(
        f"layer {layer}, {state}, unit {index}: blue -{scale:.3f} ... white 0 ... red +{scale:.3f}"
    )


@app.command("neurons")
def neurons_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint file."),
    file: str = typer.Argument(..., help="Text to run the model over, or - for stdin."),
    top: int = typer.Option(5, help="Units shown per feature."),
    unit: str = typer.Option(
        None,
        help="Colour the text by one unit: LAYER:STATE:INDEX, e.g. 0:c:17 (h, c, i, f, g, o).",
    ),
    html: str = typer.Option(None, "--html", help="Also write a self-contained page to FILE."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    memory_mb: float = typer.Option(
        neurons.DEFAULT_MEMORY_MB, help="Cap on the record's memory; longer texts are cut."
    ),
    encoding: str = typer.Option("utf-8", help="Text encoding of FILE."),
) -> None:
    """Which units track quotes, brackets, line position, words: record every unit on a text."""
    printing(lambda: _neurons(checkpoint, file, top, unit, html, as_json, memory_mb, encoding))


def _neurons(checkpoint, file, top, unit, html, as_json, memory_mb, encoding) -> None:
    if as_json and unit:
        raise UsageError("--json and --unit print different things: choose one")
    if top < 1:
        raise UsageError(f"--top must be at least 1 (got {top})")
    if not memory_mb > 0:
        raise UsageError(f"--memory-mb must be greater than 0 (got {memory_mb})")
    model, text, ids = _model_and_ids(checkpoint, file, encoding)
    if len(ids) < 2:
        raise UsageError(f"{text.name} needs at least 2 characters")
    cap = neurons.max_chars(model, memory_mb)
    if len(ids) > cap:
        warn(
            f"{text.name} has {len(ids):,} characters; recording the first {cap:,} "
            f"(--memory-mb {memory_mb:g} holds {cap:,} for this model): raise it to record more"
        )
        ids = ids[:cap]
    with _progress("recording units") as on_progress:
        rec = neurons.record(model, torch.as_tensor(ids), text.text[: len(ids)], on_progress)
    corr = neurons.correlations(rec, neurons.text_features(rec.text))
    ranked = neurons.rank_units(corr, top)
    if html:
        data = page.page_data(
            rec,
            ranked,
            neurons.gate_saturation(rec),
            f"{os.path.basename(checkpoint)} on {text.name}",
        )
        try:
            with open(html, "w", encoding="utf-8") as f:
                f.write(page.render_page(data))
        except OSError as e:
            raise OutputError(
                f"cannot write {html} ({e.strerror or e}): choose a writable path"
            ) from None
        err.print(f"wrote {html}")
    if as_json:
        result = {
            "features": ranked,
            "checkpoint": checkpoint,
            "file": text.name,
            "model": rec.kind,
            "recorded_chars": len(rec.text),
            "num_chars": len(text.text),
        }
        typer.echo(json.dumps(result))
    elif unit:
        _show_unit(rec, *_parse_unit(unit, rec))
    else:
        for feature, rows in ranked.items():
            if not rows:
                out.print(f"{feature}: constant on this text, nothing to correlate with\n")
                continue
            table = Table(title=feature, title_justify="left")
            for col in ("layer", "state", "unit", "corr"):
                table.add_column(col, justify="right")
            for r in rows:
                table.add_row(str(r["layer"]), r["state"], str(r["unit"]), f"{r['corr']:+.3f}")
            out.print(table)


# ---------------------------------------------------------------------- gradients


@app.command("gradients")
def gradients_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint file."),
    file: str = typer.Argument(..., help="Text to measure on, or - for stdin."),
    max_distance: int = typer.Option(gradients.DEFAULT_MAX_DISTANCE, help="The largest k."),
    positions: int = typer.Option(gradients.DEFAULT_POSITIONS, help="Positions averaged over."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    encoding: str = typer.Option("utf-8", help="Text encoding of FILE."),
) -> None:
    """How far back the gradient reaches: ||dL_t/dh_{t-k}||, averaged over positions of the text."""
    printing(lambda: _gradients(checkpoint, file, max_distance, positions, as_json, encoding))


def _gradients(checkpoint, file, max_distance, positions, as_json, encoding) -> None:
    model, text, ids = _model_and_ids(checkpoint, file, encoding)
    result = gradients.gradient_reach(model, torch.as_tensor(ids), max_distance, positions)
    if as_json:
        typer.echo(json.dumps({"checkpoint": checkpoint, "file": text.name, **result}))
        return
    norms = result["norms"]
    table = Table(
        title=f"||dL_t/dh_(t-k)||, {result['model']}, mean over {result['positions']} positions",
        title_justify="left",
    )
    cell = result.get("norms_cell")
    columns = ["k", "||dL/dh||", "relative to k=0"]
    columns += ["||dL/dc|| (LSTM cell)", "relative to k=1"] if cell else []
    for col in columns:
        table.add_column(col, justify="right")
    shown = sorted(
        {k for k in (0, 1, 2, 3, 5, 10, 20, 30, 50, 75, 100) if k <= max_distance} | {max_distance}
    )
    for k in shown:
        row = [str(k), f"{norms[k]:.3e}", f"{norms[k] / norms[0]:.2e}" if norms[0] else "-"]
        if cell:  # dL_t/dc_t is 0 (c_t reaches the loss only through h_t): compare to k=1
            # With --max-distance 0 there is no k=1 to compare with.
            ref = cell[1] if len(cell) > 1 else 0.0
            row += [f"{cell[k]:.3e}", f"{cell[k] / ref:.2e}" if ref else "-"]
        table.add_row(*row)
    out.print(table)
    try:
        plt = _plotext()
    except MissingExtraError as e:
        warn(f"no plot: {e}")
        return
    series = [("h", norms, 0)] + ([("c", cell, 1)] if cell else [])  # dL_t/dc_t is 0 by design
    drawn: list[float] = []
    dropped = []
    for label, values, first in series:
        kept = [(k, math.log10(v)) for k, v in enumerate(values) if v > 0]
        if kept:
            plt.plot([k for k, _ in kept], [y for _, y in kept], marker="braille", label=label)
            drawn += [y for _, y in kept]
        zeros = [k for k, v in enumerate(values) if k >= first and not v > 0]
        if zeros:
            dropped.append(
                f"{label}: {gradients.distance_ranges(zeros, len(values) - 1)}: 0, underflow"
            )
    if drawn:
        # log10 taken here and ticks at whole powers of ten, labelled 1e-06: plotext's own
        # log scale labels them 0.0000015.
        low, high = math.floor(min(drawn)), math.ceil(max(drawn))
        step = max(1, math.ceil((high - low) / 8))
        exponents = list(range(low, high + 1, step))
        plt.yticks(exponents, [f"{10.0**e:.0e}" for e in exponents])
        plt.title("gradient norm against distance k (log scale)")
        plt.xlabel("k (characters back)")
        out.print(Text.from_ansi(_plot_text(plt)) if out.is_terminal else _plot_text(plt))
    if dropped:
        out.print(f"not on the log scale: {'; '.join(dropped)}")


# ------------------------------------------------------------------------ novelty


@app.command("novelty")
def novelty_cmd(
    sample: str = typer.Argument("-", help="Text to check (a file, or - for stdin)."),
    corpus: str = typer.Option(..., "--corpus", help="The training text."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    index_path: str = typer.Option(
        None,
        "--index",
        help="Keep the corpus's suffix array in this file: built once, reused while the "
        "corpus is unchanged.",
    ),
    encoding: str = typer.Option("utf-8", help="Text encoding of both texts."),
) -> None:
    """Writing or reciting? The share of a text's n-grams found in the training text."""
    printing(lambda: _novelty(sample, corpus, as_json, index_path, encoding))


def _novelty(
    sample_path: str, corpus_path: str, as_json: bool, index_path: str | None, encoding: str
) -> None:
    if sample_path == "-" and sys.stdin.isatty():
        raise UsageError(
            "give the text to check as a file, or pipe it in (e.g. charrnn sample | ...)"
        )
    if sample_path == STDIN and corpus_path == STDIN:
        raise UsageError(
            "- (stdin) can be given only once: pass the training text as a file "
            "(--corpus FILE) and pipe the text to check in"
        )
    train = _read(corpus_path, encoding, "corpus", "give --corpus the text the model trained on")
    sample = _read(sample_path, encoding, "text", "give the text to check, e.g. a sample")
    for w in train.warnings + sample.warnings:
        warn(w)
    if index_path and os.path.exists(index_path) and not novelty.is_index(index_path):
        raise OutputError(
            f"--index {index_path!r} exists and is not a charrnn novelty index: "
            "name a new file (e.g. corpus.sa.npy) so nothing is overwritten"
        )
    index = None
    if index_path:
        index, damage = novelty.open_index(train.text, index_path)
        if damage:
            warn(f"the index {index_path} is damaged: {damage}; rebuilding it")
    if index is None:
        if err.is_terminal:
            err.print(f"indexing {train.name} ({len(train.text):,} characters) ...")
        index = novelty.CorpusIndex(train.text)
        if index_path:
            index.save(index_path)
            err.print(f"saved the index of {train.name} to {index_path}")
    with _progress("matching") as on_progress:
        result = novelty.novelty(index, sample.text, on_progress=on_progress)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    table = Table(title=f"{sample.name}: n-grams found in {train.name}", title_justify="left")
    table.add_column("n", justify="right")
    table.add_column("copied", justify="right")
    for n, share in result.ngrams.items():
        table.add_row(str(n), "-" if share is None else f"{share:.1%}")
    out.print(table)
    shown = result.longest_text[:SHOW_CHARS]
    more = len(result.longest_text) - len(shown)
    out.print(
        f"longest copied substring: {result.longest_length} characters: "
        f"{json.dumps(shown, ensure_ascii=False)}"
        + (f" … ({more:,} more; --json prints it whole)" if more else "")
    )
