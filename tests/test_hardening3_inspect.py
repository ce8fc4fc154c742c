"""Issue 23, round three of hardening: the inspection commands (plot, neurons, gradients,
novelty) meet damaged indexes, checkpoints given as runs, diverged losses, torn metrics
lines and closed pipes with one error line or a warning, and the documented exit code."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli, shakespeare_head
from typer.testing import CliRunner

from charrnn.cli import app
from charrnn.inspect import curves, gradients, novelty

runner = CliRunner()


def invoke(*args, input: str | None = None) -> SimpleNamespace:
    """The command in this process (for the checks that need no real pipe)."""
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def one_error_line(r, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def write_metrics(path, records, tail: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


# ------------------------------------------------- 1. a suffix array altered in place


def _zeroed(sa):
    sa[:] = 0


def _permuted(sa):
    sa[:] = np.random.default_rng(0).permutation(np.asarray(sa))


def _swapped(sa):  # two entries exchanged: the smallest change that misorders the array
    sa[[10, 20]] = sa[[20, 10]]


@pytest.mark.parametrize("alter", [_zeroed, _permuted, _swapped], ids=lambda f: f.__name__[1:])
def test_a_suffix_array_altered_in_place_is_rebuilt_not_trusted(tmp_path, alter):
    corpus = tmp_path / "small.txt"
    corpus.write_text(shakespeare_head(3000))
    sample = tmp_path / "tiny.txt"
    sample.write_text(shakespeare_head(500))
    index = tmp_path / "c.sa.npy"
    args = ("novelty", "--corpus", corpus, sample, "--index", index, "--json")
    first = invoke(*args)
    assert first.returncode == 0 and json.loads(first.stdout)["ngrams"]["5"] == 1.0
    size = index.stat().st_size
    sa = np.load(index, mmap_mode="r+")
    alter(sa)
    sa.flush()
    del sa
    assert index.stat().st_size == size  # same size, same key: only the array changed
    again = invoke(*args)
    assert again.returncode == 0, again.stderr
    assert "warning: the index" in again.stderr and "checksum does not match" in again.stderr
    assert json.loads(again.stdout)["ngrams"] == {"5": 1.0, "10": 1.0, "20": 1.0, "40": 1.0}
    # The rebuilt index is whole again: used as it is, without a word.
    third = invoke(*args)
    assert third.returncode == 0 and third.stderr == ""
    assert novelty.open_index(corpus.read_text(), str(index))[1] is None


def test_an_index_without_a_checksum_is_rebuilt(tmp_path):
    text = shakespeare_head(2000)
    path = str(tmp_path / "c.sa.npy")
    novelty.CorpusIndex(text).save(path)
    with open(path + ".json") as f:
        meta = json.load(f)
    del meta["crc32"]  # as charrnn wrote it before the checksum
    with open(path + ".json", "w") as f:
        json.dump(meta, f)
    index, why = novelty.open_index(text, path)
    assert index is None and "no checksum" in why
    # Another text is no damage: rebuilt without a warning.
    assert novelty.open_index(text[:-1], path) == (None, None)


# ------------------------------------------------------------- 2. plot of a checkpoint


def test_plot_of_a_checkpoint_names_the_run_folder(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    r = run_cli("plot", ckpt)
    one_error_line(r, 1, "looks like a checkpoint", f"charrnn plot {trained}")
    # Named otherwise, a checkpoint is still recognised (torch.save writes a zip).
    renamed = tmp_path / "metrics.jsonl"
    with open(ckpt, "rb") as f:
        renamed.write_bytes(f.read())
    one_error_line(invoke("plot", tmp_path), 1, "looks like a checkpoint")
    binary = tmp_path / "run.bin"
    binary.write_bytes(bytes(range(256)))
    one_error_line(invoke("plot", binary), 1, "binary data")
    latin = tmp_path / "latin.jsonl"
    raw = '{"step": 1, "val_loss": 2.0, "note": "caf\u00e9"}\n'.encode("latin-1")
    latin.write_bytes(raw)
    where = f"not UTF-8 text at byte offset {raw.index('é'.encode('latin-1'))}"
    one_error_line(invoke("plot", latin), 1, where)


# ---------------------------------------------------------- 3. NaN and inf in metrics


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "values, best",
    [
        ([NAN, 3.5, 3.0], "best 3.0000"),  # a NaN first made the best "nan"
        ([4.0, 3.5, NAN], "best 3.5000"),
        ([4.0, INF, 3.0], "best 3.0000"),  # plotext: ValueError
        ([NAN, NAN, NAN], "no finite validation loss"),  # plotext: IndexError
    ],
    ids=["nan-first", "nan-last", "inf-middle", "all-nan"],
)
def test_plot_of_non_finite_losses_draws_the_rest_and_says_so(tmp_path, values, best):
    records = [
        {"step": 10 * (i + 1), "val_loss": v, "train_loss": 4.0 - i} for i, v in enumerate(values)
    ]
    run = write_metrics(tmp_path / "run" / "metrics.jsonl", records)
    with open(run) as f:
        written = f.read()
    assert "NaN" in written or "Infinity" in written  # what json.dumps writes
    r = invoke("plot", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    bad = [f"step {10 * (i + 1)}" for i, v in enumerate(values) if not math.isfinite(v)]
    assert "warning:" in r.stderr and "loss is not finite at " + bad[0] in r.stderr
    assert "step" in r.stdout  # the plot's x label: the finite training losses are drawn
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("run: 3 evaluations to step 30") and best in summary, summary
    image = tmp_path / "loss.png"
    r = invoke("plot", tmp_path / "run", "--out", image)
    assert r.returncode == 0 and image.read_bytes().startswith(b"\x89PNG")


def test_plot_with_nothing_finite_to_draw_says_so(tmp_path):
    run = write_metrics(tmp_path / "metrics.jsonl", [{"step": 5, "val_loss": NAN}])
    r = invoke("plot", run)
    assert r.returncode == 0 and "no finite loss to draw" in r.stderr
    assert "no finite validation loss" in r.stdout


# ------------------------------------------------- 4. gradients --max-distance 0 (LSTM)


@pytest.mark.parametrize("distance", [0, 1])
def test_gradients_at_the_smallest_distances_on_an_lstm(trained, tmp_path, distance):
    text = tmp_path / "text.txt"
    text.write_text(shakespeare_head(400))
    r = invoke(
        "gradients", os.path.join(trained, "best.pt"), text, "--max-distance", distance,
        "--positions", 4,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "(LSTM cell)" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("│ ")]
    assert [row.split("│")[1].strip() for row in rows] == [str(k) for k in range(distance + 1)]
    relative_to_k1 = [row.split("│")[-2].strip() for row in rows]
    # Without a k=1 there is nothing to divide by; with one, k=1 is 1 and k=0 is 0
    # (dL_t/dc_t is 0 by design: c_t reaches L_t only through h_t).
    assert relative_to_k1 == (["-"] if distance == 0 else ["0.00e+00", "1.00e+00"])


def test_gradient_norms_that_underflow_are_named_not_dropped(trained, tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(shakespeare_head(400))
    norms = [1.0, 0.5, 0.25] + [0.0] * 8  # k >= 3 underflowed to exactly 0
    cell = [0.0, 0.9, 0.8, 0.7, 0.6, 0.0, 0.5, 0.4, 0.0, 0.0, 0.0]
    fake = {
        "distances": list(range(11)), "norms": norms, "norms_by_layer": [norms],
        "norms_cell": cell, "positions": 4, "model": "lstm",
    }  # fmt: skip
    monkeypatch.setattr(gradients, "gradient_reach", lambda *a, **k: fake)
    r = invoke("gradients", os.path.join(trained, "best.pt"), text, "--max-distance", 10)
    assert r.returncode == 0, r.stderr
    # c at k=0 is 0 by design, not an underflow: it is not named.
    assert "not on the log scale: h: k >= 3: 0, underflow; c: k = 5, 8..10: 0, underflow" in (
        r.stdout
    )


# ------------------------------------------------------------- 5. closed pipes: exit 0


def _piped(args: list[str], reader: str, cwd=None) -> subprocess.CompletedProcess:
    """`set -o pipefail; charrnn ARGS | READER`: the status is charrnn's unless it is 0."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "charrnn", *args])
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | {reader}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pipe_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipes")
    text = folder / "text.txt"
    text.write_text(shakespeare_head(1500))
    sample = folder / "sample.txt"
    sample.write_text(shakespeare_head(300))
    return text, sample


# `true` has ended before charrnn writes a byte (charrnn takes a second to start): the
# first write meets the closed pipe, every time. `head -c 1` is what a person types.
@pytest.mark.parametrize("reader", ["head -c 1", "true"])
@pytest.mark.parametrize("command", ["neurons", "neurons --unit", "gradients", "novelty", "plot"])
def test_a_closed_pipe_ends_every_inspection_command_with_0(trained, pipe_inputs, command, reader):
    text, sample = pipe_inputs
    ckpt = os.path.join(trained, "best.pt")
    args = {
        "neurons": ["neurons", ckpt, str(text)],
        "neurons --unit": ["neurons", ckpt, str(text), "--unit", "0:h:1"],
        "gradients": ["gradients", ckpt, str(text), "--max-distance", "20", "--positions", "4"],
        "novelty": ["novelty", "--corpus", str(text), str(sample)],
        "plot": ["plot", trained],
    }[command]
    r = _piped(args, reader)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no traceback, no "Exception ignored", no error line


def test_a_closed_pipe_ends_help_with_0_for_every_command():
    commands = ["", "train", "sample", "eval", "info", "plot", "neurons", "gradients", "novelty"]
    script = "; ".join(
        f'{shlex.quote(sys.executable)} -m charrnn {c} --help | true; echo "{c or "charrnn"} $?"'
        for c in commands
    )
    r = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script}"], capture_output=True, text=True, timeout=300
    )
    statuses = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert statuses == {c or "charrnn": "0" for c in commands}, (statuses, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


# -------------------------------------------------- 8. torn metrics lines, a missing run


RECORDS = [
    {"step": 10, "val_loss": 4.0, "train_loss": 4.2},
    {"step": 20, "val_loss": 3.5, "train_loss": 3.7},
]


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path):
    run = write_metrics(tmp_path / "run" / "metrics.jsonl", RECORDS, tail='{"step": 30, "val_lo')
    r = run_cli("plot", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    warning = r.stderr.strip()
    assert warning.startswith(f"warning: {run}:3: skipped a line cut short") and "\n" not in warning
    assert "run: 2 evaluations to step 20; last val 3.5000" in r.stdout


def test_a_torn_line_that_a_resumed_run_wrote_after_keeps_both_records(tmp_path):
    torn = '{"step": 30, "val_lo' + json.dumps({"step": 40, "val_loss": 3.0}) + "\n"
    run = write_metrics(tmp_path / "metrics.jsonl", RECORDS, tail=torn)
    curve = curves.read_run(run)
    assert curve.steps == [10, 20, 40] and curve.val_loss == [4.0, 3.5, 3.0]
    assert len(curve.warnings) == 1 and ":3: skipped the start of a line" in curve.warnings[0]


def test_a_damaged_line_inside_the_file_is_file_content_exit_1(tmp_path):
    run = write_metrics(tmp_path / "metrics.jsonl", RECORDS[:1], tail="garbage\n")
    with open(run, "a") as f:
        f.write(json.dumps(RECORDS[1]) + "\n")
    one_error_line(invoke("plot", run), 1, f"{run} is not a charrnn metrics.jsonl", "line 2")
    empty = tmp_path / "empty" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    one_error_line(invoke("plot", empty.parent), 1, "holds no evaluations yet")


def test_plot_of_a_missing_path_says_not_found(tmp_path):
    one_error_line(run_cli("plot", tmp_path / "nothere"), 1, "nothere' not found")


# -------------------------------- 9. TEXT and SAMPLE are not corpora; stdin only once


def test_novelty_refuses_stdin_for_both_the_corpus_and_the_sample():
    r = run_cli("novelty", "--corpus", "-", "-", input="hello world\n")
    one_error_line(r, 2, "- (stdin) can be given only once", "--corpus FILE")


def test_an_empty_text_or_sample_is_not_called_a_corpus(trained, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    full = tmp_path / "full.txt"
    full.write_text(shakespeare_head(500))
    ckpt = os.path.join(trained, "best.pt")
    for args, fix in (
        (["neurons", ckpt, empty], "give a text to run the model over"),
        (["gradients", ckpt, empty], "give a text to run the model over"),
        (["novelty", "--corpus", full, empty], "give the text to check"),
    ):
        r = invoke(*args)
        one_error_line(r, 1, f"error: {empty} is empty: {fix}")
        assert "corpus" not in r.stderr and "learn from" not in r.stderr
    r = invoke("novelty", "--corpus", empty, full)
    one_error_line(r, 1, f"corpus {empty} is empty", "the text the model trained on")
    assert "learn from" not in r.stderr


# ------------------------------------------------------------ 16. how the plots look


def test_the_terminal_plot_keeps_the_terminals_own_background(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import charrnn.cli.inspect as cli_inspect

    screen = io.StringIO()
    terminal = Console(
        file=screen, force_terminal=True, color_system="256", width=100, highlight=False
    )
    monkeypatch.setattr(cli_inspect, "out", terminal)
    run = write_metrics(tmp_path / "run" / "metrics.jsonl", RECORDS)
    r = invoke("plot", run)
    assert r.returncode == 0, r.stderr
    drawn = screen.getvalue()
    codes = set(re.findall(r"\x1b\[([0-9;]*)m", drawn))
    foreground = {c for c in codes if re.fullmatch(r"3[0-7]|9[0-7]|38;.*", c)}
    background = {c for c in codes if re.fullmatch(r"4[0-7]|10[0-7]|48;.*", c)}
    assert foreground and not background, codes  # coloured lines, no painted canvas


def test_log_plot_ticks_are_powers_of_ten_in_e_notation(trained, tmp_path, monkeypatch):
    text = tmp_path / "text.txt"
    text.write_text(shakespeare_head(400))
    norms = [1.5e-3 * 0.5**k for k in range(21)]  # down to 1.4e-09
    fake = {
        "distances": list(range(21)), "norms": norms, "norms_by_layer": [norms],
        "positions": 4, "model": "rnn",
    }  # fmt: skip
    monkeypatch.setattr(gradients, "gradient_reach", lambda *a, **k: fake)
    r = invoke("gradients", os.path.join(trained, "best.pt"), text, "--max-distance", 20)
    assert r.returncode == 0, r.stderr
    ticks = [line.split("┤")[0].strip() for line in r.stdout.splitlines() if "┤" in line]
    assert "1e-06" in ticks and "1e-03" in ticks, ticks
    assert all(math.isclose(math.log10(float(t)), round(math.log10(float(t)))) for t in ticks)
    assert "0.000" not in r.stdout


def test_forty_runs_get_a_legend_beside_the_plot_and_no_warning(tmp_path):
    runs = []
    for k in range(40):
        records = [
            {"step": s, "val_loss": 4 - s / (10 + k), "train_loss": 4.1 - s / (9 + k)}
            for s in (10, 20, 30)
        ]
        runs.append(write_metrics(tmp_path / f"run{k:02d}" / "metrics.jsonl", records))
    image = tmp_path / "loss.png"
    r = invoke("plot", *runs, "--out", image)
    assert r.returncode == 0 and image.read_bytes().startswith(b"\x89PNG")
    assert r.stderr.strip() == f"wrote {image}"  # matplotlib's layout warning is gone
    r = invoke("plot", *runs)
    assert r.returncode == 0
    assert "40 runs: too many to label" in r.stderr
    assert "run00 val" not in r.stdout and "run39: 3 evaluations" in r.stdout
