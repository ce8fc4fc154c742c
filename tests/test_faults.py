"""Bad input gets a clear error and loses nothing.

Every failure here must end as one `error: ...` line on stderr naming the problem, exit 2
for a bad option value and 1 for anything else, no traceback, nothing on stdout, and no
checkpoint changed. Interruptions (signals, a full disk, a non-finite loss, a second run
into the same folder) must leave the last saved checkpoint loadable.

Fast in-process checks use typer's CliRunner; the signal and pipeline checks run
`python -m charrnn` in a subprocess, as a user would.
"""

from __future__ import annotations

import errno
import math
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

import charrnn.corpus
import charrnn.sources
import charrnn.training.loop
from charrnn.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.errors import CheckpointError, TrainingError
from charrnn.training import MAX_BAD_STEPS, Notice, StepDone, StopRequest

# A small corpus with a few non-ASCII characters, so a cut multi-byte character would show.
TEXT = "the quick brown fox jumps over the lazy dog; déjà vu, naïve café. " * 30
# A tiny model for CLI runs: trains a step in milliseconds.
TINY = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16"]
TINY += ["--precision", "fp32", "--device", "cpu"]
# Subprocesses get one math thread: the machine may be busy, and tiny ops only lose by
# spreading over threads that compete with other work.
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WAIT_S = 45.0  # the longest a subprocess may take to reach a state we wait for

runner = CliRunner()


# ------------------------------------------------------------------------- helpers


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def assert_error(result, code: int, *needles: str) -> str:
    """The command failed with `code`, printed exactly one `error:` line containing every
    needle, nothing on stdout, and no exception escaped as a traceback."""
    escaped = result.exception
    assert escaped is None or isinstance(escaped, SystemExit), (
        f"an exception escaped instead of an error line: {escaped!r}\n{result.output}"
    )
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    assert result.stdout == "", f"stdout must carry only data, got {result.stdout!r}"
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Every regular file in `folder` (the lock file aside) with its bytes."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != ".lock"
    }


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values())


# The small LSTM the library-level fault tests train (dropout on: RNG state matters).
FAULT_RUN = {
    "hidden_size": 16,
    "dropout": 0.3,
    "seq_len": 8,
    "warmup_steps": 3,
    "max_steps": 15,
    "eval_every": 5,
}


def lib_run(text: str, out: Path, resume=None, stop=None, on_event=None, **overrides):
    """Train through the library as the CLI does; a resumed run takes its checkpoint's
    configs, as `charrnn train --resume` does."""
    if resume is None:
        overrides = {**FAULT_RUN, **overrides}
    result, _ = tiny_run(text, str(out), resume, stop, on_event, **overrides)
    return result


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, corpus_file) -> Path:
    """A folder with last.pt, best.pt and metrics.jsonl from a 3-step CLI run."""
    out = tmp_path_factory.mktemp("saved_run")
    result = invoke("train", corpus_file, "--out", out, *TINY, "--max-steps", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    return out


@pytest.fixture
def run_copy(tmp_path, saved_run) -> Path:
    """A private copy of the saved run, to be damaged or overwritten."""
    out = tmp_path / "run"
    shutil.copytree(saved_run, out)
    return out


# -------------------------------------------------------------------------- corpus


def _invalid_utf8(tmp: Path) -> Path:
    path = tmp / "latin1.txt"
    path.write_bytes(b"hello world " * 10 + "déjà vu".encode("latin-1") + b" more text" * 10)
    return path


def _corpus_cases():
    def missing(tmp):
        return tmp / "no-such-file.txt"

    def directory(tmp):
        (tmp / "a-folder").mkdir()
        return tmp / "a-folder"

    def write(name, data):
        def make(tmp):
            (tmp / name).write_bytes(data)
            return tmp / name

        return make

    return [
        pytest.param(missing, ("not found", "no-such-file.txt"), id="missing"),
        pytest.param(directory, ("directory",), id="directory"),
        pytest.param(write("empty.txt", b""), ("empty",), id="empty"),
        pytest.param(write("one.txt", b"a" * 2000), ("one distinct character",), id="one-char"),
        pytest.param(_invalid_utf8, ("offset 121", "--encoding"), id="invalid-utf8"),
        pytest.param(
            write("bin.txt", b"some text " * 10 + b"\x00\x01\x02" + b"more " * 10),
            ("binary", "offset 100"),
            id="nul-bytes",
        ),
    ]


@pytest.mark.parametrize(("make", "needles"), _corpus_cases())
def test_unusable_corpus_is_refused(tmp_path, make, needles):
    out = tmp_path / "out"
    result = invoke("train", make(tmp_path), "--out", out, *TINY, "--max-steps", "1")
    assert_error(result, 1, *needles)
    assert not (out / "last.pt").exists()


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read a chmod 000 file"
)
def test_unreadable_corpus_is_refused(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(TEXT)
    path.chmod(0)
    try:
        result = invoke("train", path, "--out", tmp_path / "out", *TINY)
    finally:
        path.chmod(0o600)
    assert_error(result, 1, "permission denied")


def test_unreadable_corpus_is_refused_even_as_root(tmp_path, monkeypatch):
    # The same path as chmod 000, for a test run as root: open() itself is refused.
    path = tmp_path / "secret.txt"
    path.write_text(TEXT)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(charrnn.sources, "open", denied, raising=False)
    result = invoke("train", path, "--out", tmp_path / "out", *TINY)
    assert_error(result, 1, "permission denied", "secret.txt")


def test_empty_stdin_is_refused(tmp_path):
    result = invoke("train", "-", "--out", tmp_path / "out", *TINY, input="")
    assert_error(result, 1, "<stdin>", "empty")


def test_too_short_corpus_names_a_minimum_that_works(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdef" * 5)
    out = tmp_path / "out"
    line = assert_error(invoke("train", short, "--out", out, *TINY), 1, "too short", "--seq-len")
    assert "needs 65" in line  # batch 4 x seq 16 + 1 target
    need = int(re.search(r"at least (\d+) characters", line).group(1))
    assert need > len("abcdef" * 5)
    # The minimum the message gives is enough: that many characters train.
    enough = tmp_path / "enough.txt"
    enough.write_text(("abcdef" * need)[:need])
    result = invoke("train", enough, "--out", out, *TINY, "--max-steps", "1", "--quiet")
    assert result.exit_code == 0, result.output


def test_corpus_cut_mid_character_is_accepted_with_a_warning(tmp_path):
    data = TEXT.encode("utf-8") + "é".encode()[:1]  # `head -c` cut a 2-byte character
    path = tmp_path / "cut.txt"
    path.write_bytes(data)
    out = tmp_path / "out"
    result = invoke("train", path, "--out", out, *TINY, "--max-steps", "1", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "middle of a character" in warnings[0]
    assert "error" not in result.stderr
    assert load_checkpoint(str(out / "last.pt"))["vocab"] == sorted(set(TEXT))


# ------------------------------------------------------------------------- options

BAD_TRAIN_OPTIONS = [
    (["--hidden-size", "0"], "--hidden-size"),
    (["--hidden-size=-8"], "--hidden-size"),
    (["--num-layers", "0"], "--num-layers"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size=-4"], "--batch-size"),
    (["--seq-len", "0"], "--seq-len"),
    (["--seq-len=-16"], "--seq-len"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--dropout", "1.0"], "--dropout"),
    (["--dropout=-0.1"], "--dropout"),
    (["--lr", "0"], "--lr"),
    (["--grad-clip=-1"], "--grad-clip"),
    (["--max-steps", "0"], "--max-steps"),
    (["--eval-every", "0"], "--eval-every"),
    (["--val-chars", "0"], "--val-chars"),
    (["--model", "transformer"], "--model"),
    (["--precision", "fp8"], "--precision"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda"], "no CUDA"),
    (["--device", "cuda:3"], "no CUDA"),
    (["--time-limit", "soon"], "--time-limit"),
    (["--time-limit", "0"], "--time-limit"),
    (["--encoding", "klingon"], "--encoding"),
    (["--resume", "--force"], "--resume"),
]


@pytest.mark.parametrize(
    ("options", "needle"), BAD_TRAIN_OPTIONS, ids=[" ".join(o) for o, _ in BAD_TRAIN_OPTIONS]
)
def test_bad_train_option_is_a_usage_error(tmp_path, corpus_file, options, needle):
    if "cuda" in options[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    result = invoke("train", corpus_file, "--out", out, *TINY, "--max-steps", "1", *options)
    assert_error(result, 2, needle)
    assert not (out / "last.pt").exists()


# Values the type accepts (floats) that no run can use: each should be refused up front.
NON_FINITE_OPTIONS = [
    pytest.param(
        ["--epochs", "nan"],
        id="epochs-nan",
    ),
    pytest.param(
        ["--epochs", "inf"],
        id="epochs-inf",
    ),
    pytest.param(
        ["--lr", "nan"],
        id="lr-nan",
    ),
    pytest.param(
        ["--grad-clip", "nan"],
        id="grad-clip-nan",
    ),
]


@pytest.mark.parametrize("options", NON_FINITE_OPTIONS)
def test_non_finite_train_option_is_a_usage_error(tmp_path, corpus_file, options):
    out = tmp_path / "out"
    limit = [] if options[0] == "--epochs" else ["--max-steps", "2"]
    result = invoke("train", corpus_file, "--out", out, *TINY, "--quiet", *limit, *options)
    assert_error(result, 2, options[0])


BAD_SAMPLE_OPTIONS = [
    (["--temperature=-0.5"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "0"], "--top-k"),
    (["--length=-1"], "--length"),
    (["--num-samples", "0"], "--num-samples"),
    (["--seed", ""], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda"], "no CUDA"),
]


@pytest.mark.parametrize(
    ("options", "needle"), BAD_SAMPLE_OPTIONS, ids=[" ".join(o) for o, _ in BAD_SAMPLE_OPTIONS]
)
def test_bad_sample_option_is_a_usage_error(saved_run, options, needle):
    if "cuda" in options and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("sample", "-c", saved_run / "last.pt", "--length", "5", *options)
    assert_error(result, 2, needle)


def test_seed_outside_the_vocabulary_lists_the_strangers(saved_run):
    result = invoke("sample", "-c", saved_run / "last.pt", "--seed", "the ZOO 🦊", "--length", "3")
    line = assert_error(result, 2, "--seed", "'Z'", "'O'", "'🦊'")
    assert "'t'" not in line and "'h'" not in line  # only the characters it lacks


@pytest.mark.parametrize("separator", ["\\", "\\x"], ids=["trailing-backslash", "bad-x-escape"])
def test_bad_separator_escape_is_a_usage_error(saved_run, separator):
    options = ["--length", "3", "--num-samples", "2", "--separator", separator]
    result = invoke("sample", "-c", saved_run / "last.pt", *options)
    assert_error(result, 2, "--separator")


@pytest.mark.parametrize("name", ["notes[/x].txt", "data[bold].txt"])
def test_error_message_shows_paths_with_brackets_verbatim(tmp_path, name):
    result = invoke("train", tmp_path / name, "--out", tmp_path / "out", *TINY)
    assert_error(result, 1, "not found", name)


# ------------------------------------------------------------------- output folder


def test_out_that_is_a_file_is_refused_before_training(tmp_path, corpus_file):
    out = tmp_path / "notes.txt"
    out.write_bytes(b"precious")
    result = invoke("train", corpus_file, "--out", out, *TINY, "--max-steps", "1")
    assert_error(result, 1, "is a file")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_existing_run_is_not_overwritten_without_resume_or_force(run_copy, corpus_file):
    before = file_bytes(run_copy)
    result = invoke("train", corpus_file, "--out", run_copy, *TINY, "--max-steps", "1")
    assert_error(result, 1, "already holds a run", "--resume", "--force")
    assert file_bytes(run_copy) == before


def test_force_with_a_bad_corpus_leaves_the_old_run_intact(run_copy, tmp_path):
    before = file_bytes(run_copy)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"x" * 500)
    result = invoke("train", bad, "--out", run_copy, *TINY, "--max-steps", "1", "--force")
    assert_error(result, 1, "one distinct character")
    assert file_bytes(run_copy) == before


def test_force_with_a_run_that_fails_before_its_first_save_leaves_the_old_run_intact(
    run_copy, corpus_file, monkeypatch
):
    # Every step's gradient is non-finite: the run stops with an error before any save.
    monkeypatch.setattr(charrnn.training.loop, "clip_gradients", lambda params, clip: math.nan)
    before = file_bytes(run_copy)
    result = invoke("train", corpus_file, "--out", run_copy, *TINY, "--max-steps", "50", "--force")
    assert_error(result, 1, "non-finite", "--lr")
    assert file_bytes(run_copy) == before
    assert result.stderr.count("warning:") == MAX_BAD_STEPS


def test_resume_without_last_checkpoint_is_refused(tmp_path, corpus_file):
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("train", corpus_file, "--out", out, *TINY, "--resume")
    assert_error(result, 1, "nothing to resume", "last.pt")


def test_resume_with_a_different_corpus_is_refused(run_copy, tmp_path):
    before = file_bytes(run_copy)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("q", "Q") + "§", encoding="utf-8")
    result = invoke("train", other, "--out", run_copy, "--resume", "--max-steps", "5")
    assert_error(result, 1, "does not match", "'Q'", "'§'", "absent", "'q'")
    assert file_bytes(run_copy) == before


# --------------------------------------------------------------------- checkpoints


def _bad_checkpoint(kind: str, real: Path, path: Path) -> None:
    if kind == "missing":
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
    elif kind == "newer":
        ckpt = load_checkpoint(str(real))
        ckpt["version"] = FORMAT_VERSION + 1
        torch.save(ckpt, path)
    else:
        raise AssertionError(kind)


CHECKPOINT_FAULTS = {
    "missing": ("not found",),
    "empty": ("empty",),
    "truncated": ("cannot be read",),
    "random": ("refused",),
    "foreign": ("not a charrnn checkpoint",),
    "newer": ("newer", "upgrade"),
}


@pytest.mark.parametrize("command", ["sample", "info", "eval", "resume"])
@pytest.mark.parametrize("kind", list(CHECKPOINT_FAULTS))
def test_bad_checkpoint_is_refused(tmp_path, saved_run, corpus_file, kind, command):
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "last.pt"
    _bad_checkpoint(kind, saved_run / "last.pt", path)
    before = file_bytes(folder)
    if command == "sample":
        result = invoke("sample", "-c", path, "--length", "5")
    elif command == "info":
        result = invoke("info", path)
    elif command == "eval":
        result = invoke("eval", corpus_file, "-c", path)
    else:
        result = invoke("train", corpus_file, "--out", folder, "--resume", "--max-steps", "9")
    needles = ("nothing to resume",) if (kind, command) == ("missing", "resume") else ()
    assert_error(result, 1, *(needles or CHECKPOINT_FAULTS[kind]))
    assert file_bytes(folder) == before


def test_any_non_checkpoint_bytes_raise_checkpoint_error(tmp_path, corpus_file):
    candidates = [corpus_file.read_bytes(), b"hello world\n"]
    candidates += [random.Random(seed).randbytes(4096) for seed in range(10)]
    for i, data in enumerate(candidates):
        path = tmp_path / f"junk{i}.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(str(path))


def test_text_file_given_as_checkpoint_is_refused(corpus_file):
    assert_error(invoke("sample", "-c", corpus_file), 1, "corpus.txt")


def _damaged_for_resume(saved_run: Path, how: str) -> dict:
    ckpt = load_checkpoint(str(saved_run / "last.pt"))
    if how == "no-optimizer-state":
        del ckpt["optimizer_state"]
    else:  # weights of the wrong shape under the right names
        ckpt["model_state"] = {k: v[..., :1].clone() for k, v in ckpt["model_state"].items()}
    return ckpt


@pytest.mark.parametrize("how", ["no-optimizer-state", "wrong-shapes"])
def test_damaged_checkpoint_is_refused_on_resume(tmp_path, saved_run, corpus_file, how):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(_damaged_for_resume(saved_run, how), folder / "last.pt")
    result = invoke("train", corpus_file, "--out", folder, "--resume", "--max-steps", "9")
    assert_error(result, 1, "last.pt")


# ---------------------------------------------------------- untrusted checkpoints


class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _hostile_files(folder: Path, marker: Path) -> list[Path]:
    zip_format = folder / "hostile.pt"
    torch.save({"format": "charrnn-checkpoint", "version": 1, "x": Payload(marker)}, zip_format)
    legacy = folder / "hostile-legacy.pt"
    torch.save(Payload(marker), legacy, _use_new_zipfile_serialization=False)
    plain = folder / "hostile-pickle.pt"
    plain.write_bytes(pickle.dumps({"model_state": Payload(marker)}, protocol=2))
    return [zip_format, legacy, plain]


def test_hostile_checkpoint_cannot_run_code(tmp_path, corpus_file):
    marker = tmp_path / "MARKER"
    files = _hostile_files(tmp_path, marker)
    for path in files:
        with pytest.raises(CheckpointError, match="refused"):
            load_checkpoint(str(path))
        assert_error(invoke("sample", "-c", path, "--length", "5"), 1, "refused")
        assert_error(invoke("info", path), 1, "refused")
        run = tmp_path / f"run-{path.stem}"
        run.mkdir()
        shutil.copy(path, run / "last.pt")
        result = invoke("train", corpus_file, "--out", run, "--resume", "--max-steps", "5")
        assert_error(result, 1, "refused")
        assert not marker.exists(), f"loading {path.name} ran code"
    # The payload is real: an unsafe load of the same file does create the marker.
    torch.load(files[0], weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------- atomic save


def _fail_midway(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, saved_run, monkeypatch):
    path = tmp_path / "last.pt"
    shutil.copy(saved_run / "last.pt", path)
    before = path.read_bytes()
    ckpt = load_checkpoint(str(path))
    ckpt["step"] += 1
    monkeypatch.setattr(torch, "save", _fail_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(ckpt, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(str(path))["step"] == ckpt["step"] - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_disk_full_during_training_is_an_error_line(run_copy, corpus_file, monkeypatch):
    before = file_bytes(run_copy)
    monkeypatch.setattr(torch, "save", _fail_midway)
    result = invoke("train", corpus_file, "--out", run_copy, *TINY, "--max-steps", "2", "--force")
    monkeypatch.undo()
    assert file_bytes(run_copy) == before
    assert_error(result, 1, "No space left")


# ------------------------------------------------------ Ctrl-C, resume, non-finite

SHORT = "It was the best of times, it was the worst of times; à bientôt! " * 7  # 12 windows


@pytest.mark.parametrize("stop_at", [7, 12], ids=["mid-epoch", "epoch-end"])
def test_stop_and_resume_equals_never_stopped(tmp_path, stop_at):
    whole = lib_run(SHORT, tmp_path / "whole")
    assert whole.step == 15 and whole.stop_reason == "max_steps"

    stop = StopRequest()

    def on_event(event):
        if isinstance(event, StepDone) and event.step == stop_at:
            stop.set("SIGINT")

    parted = tmp_path / "parted"
    first = lib_run(SHORT, parted, stop=stop, on_event=on_event)
    assert (first.step, first.stop_reason) == (stop_at, "SIGINT")
    stopped = tmp_path / "stopped.pt"
    shutil.copy(parted / "last.pt", stopped)
    assert load_checkpoint(str(stopped))["step"] == stop_at
    second = lib_run(SHORT, parted, resume=load_checkpoint(str(stopped)))
    assert second.step == 15

    want = load_checkpoint(str(tmp_path / "whole" / "last.pt"))["model_state"]
    got = load_checkpoint(str(parted / "last.pt"))["model_state"]
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert second.last_val_loss == whole.last_val_loss
    assert second.best_val_loss == whole.best_val_loss

    # The comparison is sharp: without the saved RNG state, dropout draws other masks.
    no_rng = load_checkpoint(str(stopped))
    del no_rng["rng"]
    (tmp_path / "no-rng").mkdir()
    shutil.copy(stopped, tmp_path / "no-rng" / "last.pt")
    lib_run(SHORT, tmp_path / "no-rng", resume=no_rng)
    other = load_checkpoint(str(tmp_path / "no-rng" / "last.pt"))["model_state"]
    assert not all(torch.equal(want[name], other[name]) for name in want)


def test_weights_gone_non_finite_are_never_saved(tmp_path, monkeypatch):
    real_clip = charrnn.training.loop.clip_gradients
    calls = []

    def poison(params, clip):  # before the optimizer step of step 8: a NaN weight
        calls.append(1)
        norm = real_clip(params, clip)
        if len(calls) == 8:
            with torch.no_grad():
                params[0].view(-1)[0] = math.nan
        return norm

    monkeypatch.setattr(charrnn.training.loop, "clip_gradients", poison)
    events = []
    with pytest.raises(TrainingError, match="weights became non-finite by step 10"):
        lib_run(SHORT, tmp_path, on_event=events.append, eval_every=5, dropout=0.0)
    assert len([e for e in events if isinstance(e, Notice)]) == 2  # steps 9 and 10
    saved = load_checkpoint(str(tmp_path / "last.pt"))
    assert saved["step"] == 5
    assert finite(saved["model_state"])
    assert finite(load_checkpoint(str(tmp_path / "best.pt"))["model_state"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_persistently_non_finite_gradients_stop_the_run(tmp_path, monkeypatch):
    real_clip = charrnn.training.loop.clip_gradients
    calls = []

    def explode(params, clip):  # from step 6 on, every gradient is non-finite
        calls.append(1)
        return math.inf if len(calls) >= 6 else real_clip(params, clip)

    monkeypatch.setattr(charrnn.training.loop, "clip_gradients", explode)
    events = []
    with pytest.raises(TrainingError, match=f"{MAX_BAD_STEPS} steps in a row"):
        lib_run(SHORT, tmp_path, on_event=events.append)
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == MAX_BAD_STEPS
    assert "step 6" in notices[0].message
    saved = load_checkpoint(str(tmp_path / "last.pt"))
    assert saved["step"] == 5 and finite(saved["model_state"])


def test_one_non_finite_step_is_skipped_and_the_run_goes_on(tmp_path, monkeypatch):
    real_clip = charrnn.training.loop.clip_gradients
    calls = []

    def hiccup(params, clip):
        calls.append(1)
        return math.nan if len(calls) == 4 else real_clip(params, clip)

    monkeypatch.setattr(charrnn.training.loop, "clip_gradients", hiccup)
    events = []
    result = lib_run(SHORT, tmp_path, on_event=events.append)
    assert result.step == 15
    notices = [e for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and "step 4" in notices[0].message
    assert finite(load_checkpoint(str(tmp_path / "last.pt"))["model_state"])


# ------------------------------------------------------------------------- signals


SIGNAL_RUN = [*TINY, "--max-steps", "100000", "--eval-every", "10"]


class Training:
    """`charrnn train` running in a subprocess into its own --out."""

    def __init__(self, root: Path, corpus: Path, name: str):
        self.out = root / name
        self.err_path = root / f"{name}.stderr"
        self._err = open(self.err_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        command = [sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(self.out)]
        self.proc = subprocess.Popen(
            [*command, *SIGNAL_RUN],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            env=SUB_ENV,
            cwd=root,
        )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_save(self) -> None:
        """Until last.pt exists (the handlers are installed and a save has happened)."""
        deadline = time.monotonic() + WAIT_S
        while not (self.out / "last.pt").exists():
            assert self.proc.poll() is None, f"training ended early:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no last.pt after {WAIT_S}s:\n{self.stderr}"
            time.sleep(0.05)

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT_S)
        finally:
            self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@pytest.fixture(scope="module")
def trainings(tmp_path_factory, corpus_file):
    """Three runs started together (they share the startup time), one per signal."""
    root = tmp_path_factory.mktemp("signals")
    runs = {name: Training(root, corpus_file, name) for name in ("int", "term", "kill")}
    yield runs
    for run in runs.values():
        run.kill()


def _assert_stopped_cleanly(run: Training, sig: str, code: int) -> None:
    assert run.wait() == code, run.stderr
    err = run.stderr
    assert "Traceback" not in err
    assert f"stopped by {sig}" in err and f"--out {run.out} --resume" in err
    saved = load_checkpoint(str(run.out / "last.pt"))
    assert saved["step"] > 0 and finite(saved["model_state"])
    assert not list(run.out.glob(".tmp-*"))


@pytest.mark.slow
def test_second_run_is_refused_then_sigint_saves_and_exits(trainings, corpus_file):
    run = trainings["int"]
    run.wait_for_save()
    for flag in ("--force", "--resume"):
        result = invoke("train", corpus_file, "--out", run.out, "--max-steps", "5", flag)
        assert_error(result, 1, "another charrnn train", "is writing")
        assert run.proc.poll() is None, "the first run must go on"
    run.proc.send_signal(signal.SIGINT)
    _assert_stopped_cleanly(run, "SIGINT", 130)


@pytest.mark.slow
def test_sigterm_saves_and_exits(trainings):
    run = trainings["term"]
    run.wait_for_save()
    run.proc.send_signal(signal.SIGTERM)
    _assert_stopped_cleanly(run, "SIGTERM", 143)


@pytest.mark.slow
def test_sigkill_leaves_a_checkpoint_that_resumes(trainings, corpus_file):
    run = trainings["kill"]
    run.wait_for_save()
    run.proc.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    saved = load_checkpoint(str(run.out / "last.pt"))
    assert finite(saved["model_state"])
    target = saved["step"] + 3
    result = invoke("train", corpus_file, "--out", run.out, "--resume", "--max-steps", target)
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert f"resuming at step {saved['step']}" in result.stderr
    assert load_checkpoint(str(run.out / "last.pt"))["step"] == target


# ---------------------------------------------------------------- sampling to a pipe


def test_sample_into_head_exits_quietly(tmp_path, saved_run):
    err_path = tmp_path / "sample.stderr"
    script = (
        f'"{sys.executable}" -m charrnn sample -c "{saved_run / "last.pt"}" --length 200000 '
        '2>"$ERR" | head -c 100; echo; echo "status=${PIPESTATUS[0]}"'
    )
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        env={**SUB_ENV, "ERR": str(err_path)},
        timeout=WAIT_S,
    )
    assert done.stdout.endswith(b"\nstatus=0\n"), done.stdout[-200:]
    assert len(done.stdout) == 100 + len(b"\nstatus=0\n")
    assert err_path.read_text() == ""


def test_sigint_stops_sampling_with_the_text_intact(tmp_path, saved_run):
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    seed = "déjà vu"
    args = ["--length", "10000000", "--seed", seed]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "sample", "-c", str(saved_run / "last.pt"), *args],
            stdout=out,
            stderr=err,
            env=SUB_ENV,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            while out_path.stat().st_size < 2000:
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no output from charrnn sample"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 130
    assert err_path.read_text() == ""  # no traceback, no noise
    data = out_path.read_bytes()
    assert len(data) >= 2000  # what was printed before the signal is still there
    text = data.decode("utf-8")  # ... and no character is cut in half
    assert text.startswith(seed)
    vocab = set(load_checkpoint(str(saved_run / "last.pt"))["vocab"])
    assert set(text) <= vocab | {"\n"}
