"""Hardening, round two: what a careless user or a damaged file found (issue 13).

The same promise as tests/test_faults.py: one `error:` line naming the problem and the fix,
exit 2 for a bad option value and 1 for anything else, no traceback, nothing lost, never a
silently wrong result.
"""

# ruff: noqa: F811 - the fixtures imported from test_faults are used by name

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run
from test_faults import (  # noqa: F401
    SUB_ENV,
    TEXT,
    TINY,
    assert_error,
    corpus_file,
    file_bytes,
    invoke,
    run_copy,
    saved_run,
)

from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.sample import draw
from charrnn.training import StepDone, StopRequest


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`python -m charrnn ARGS` in a subprocess, bytes in and out."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        env=kwargs.pop("env", SUB_ENV),
        timeout=120,
        **kwargs,
    )


def one_error_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


# ------------------------------------------------- 1. --force never mixes two runs


def test_interrupted_force_run_leaves_no_file_of_the_old_run(tmp_path):
    out = tmp_path / "frc"
    tiny_run(TEXT, str(out), max_steps=4, eval_every=2)
    assert {p.name for p in out.iterdir()} >= {"last.pt", "best.pt", "metrics.jsonl"}

    stop = StopRequest()

    def stop_at_step_3(event):
        if isinstance(event, StepDone) and event.step == 3:
            stop.set("SIGINT")

    other = "Nothing here is like the first text at all; ZYXW QRST. " * 40
    result, corpus = tiny_run(other, str(out), stop=stop, on_event=stop_at_step_3, eval_every=100)
    assert result.stop_reason == "SIGINT" and result.step == 3
    # Before its first evaluation the new run saved last.pt only: the old best.pt and
    # metrics.jsonl must be gone with the old last.pt, or `sample` would use the old model.
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["last.pt"]
    assert load_checkpoint(str(out / "last.pt"))["vocab"] == corpus.vocab.to_list()
    result = invoke("sample", "-c", out / "best.pt", "-n", "5")
    assert_error(result, 1, "not found")


# -------------------------------------------- 3. a finished run, resumed, stays as it is


def test_resuming_a_finished_run_changes_nothing(run_copy, corpus_file):
    before = file_bytes(run_copy)
    for _ in range(2):
        result = invoke("train", corpus_file, "--out", run_copy, "--resume")
        assert result.exit_code == 0, result.output
        assert "nothing to do" in result.stderr and "step 3" in result.stderr
    assert file_bytes(run_copy) == before
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").open()]
    assert steps == sorted(set(steps))  # no evaluation recorded twice


# -------------------------------------------------------------- 4, 5, 12. sampling


@pytest.mark.parametrize("temperature", [1e-39, 1e-45, 5e-324, 1e-31])
def test_a_temperature_too_small_to_divide_by_acts_as_zero(temperature):
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    uniform = np.random.default_rng(1).random(4)
    expected = logits.argmax(axis=1)
    np.testing.assert_array_equal(draw(logits.copy(), temperature, None, None, uniform), expected)


def test_cli_sample_with_an_underflowing_temperature_is_the_argmax_text(saved_run):
    ckpt = saved_run / "best.pt"
    argmax = invoke("sample", "-c", ckpt, "-n", "60", "-t", "0", "--seed", "the ")
    tiny = invoke("sample", "-c", ckpt, "-n", "60", "-t", "1e-39", "--seed", "the ")
    assert argmax.exit_code == 0 and tiny.exit_code == 0
    assert tiny.stdout == argmax.stdout


@pytest.mark.parametrize(
    ("typed", "printed"), [("—", "—"), ("é", "é"), ("\\n--\\n", "\n--\n"), ("ü\\t", "ü\t")]
)
def test_separator_prints_what_was_typed(saved_run, typed, printed):
    result = invoke(
        "sample", "-c", saved_run / "best.pt", "-n", "5", "--num-samples", "2",
        "--seed", "a", "--separator", typed, "--random-seed", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = result.stdout[:6], result.stdout[6 + len(printed) :]
    assert result.stdout == first + printed + second
    assert len(second) == 7 and second.startswith("a")  # seed, 5 characters, newline


def test_lone_surrogate_separator_is_refused_before_any_output(saved_run):
    result = invoke(
        "sample", "-c", saved_run / "best.pt", "--num-samples", "2", "--separator", "\\ud800"
    )
    assert_error(result, 2, "--separator", "surrogate")


# --------------------------------------------------- 7. stderr that cannot be written


def test_training_survives_a_stderr_that_cannot_be_written(tmp_path, corpus_file):
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        proc = cli(
            "train", corpus_file, "--out", out, *TINY, "--max-steps", "6",
            "--eval-every", "3", stderr=full,
        )  # fmt: skip
    assert proc.returncode == 0
    assert load_checkpoint(str(out / "last.pt"))["step"] == 6


# ------------------------------------------------------ 8, 15. stdout: full, closed, gone


@pytest.fixture(scope="module")
def corpus_and_checkpoint(saved_run, corpus_file):
    return corpus_file, saved_run / "best.pt"


def _data_commands(corpus: Path, ckpt: Path) -> dict[str, list]:
    return {
        "sample": ["sample", "-c", ckpt, "-n", "3000"],
        "eval": ["eval", "-c", ckpt, corpus, "--json"],
        "info": ["info", ckpt],
    }


@pytest.mark.parametrize("command", ["sample", "eval", "info"])
def test_output_to_a_full_device_is_an_error_line(corpus_and_checkpoint, command):
    args = _data_commands(*corpus_and_checkpoint)[command]
    with open("/dev/full", "w") as full:
        proc = cli(*args, stdout=full)
    assert proc.returncode == 1
    assert "No space left" in one_error_line(proc.stderr)


@pytest.mark.parametrize("command", ["sample", "eval", "info"])
def test_closed_stdout_is_an_error_line(corpus_and_checkpoint, command):
    args = _data_commands(*corpus_and_checkpoint)[command]
    # `>&-`: the command starts with no file descriptor 1 at all.
    proc = cli(*args, stdout=None, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1
    assert "stdout is closed" in one_error_line(proc.stderr)


@pytest.mark.parametrize("command", ["sample", "eval", "info"])
def test_a_reader_that_went_away_ends_every_command_quietly(corpus_and_checkpoint, command):
    args = _data_commands(*corpus_and_checkpoint)[command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| true`: nobody will read
    try:
        proc = cli(*args, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert proc.stderr == b""


def test_eval_of_too_little_text_exits_1_whatever_the_length(saved_run, tmp_path):
    for name, text in (("empty.txt", ""), ("one.txt", "a")):
        (tmp_path / name).write_text(text)
        result = invoke("eval", "-c", saved_run / "best.pt", tmp_path / name)
        assert_error(result, 1)


# ------------------------------------------------------------------- 9, 11. numbers


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_sample_seed_outside_its_range_is_a_usage_error(saved_run, seed):
    result = invoke("sample", "-c", saved_run / "best.pt", "--random-seed", seed)
    assert_error(result, 2, "--random-seed", "18446744073709551615")


def test_train_seed_beyond_64_bits_is_a_usage_error(tmp_path, corpus_file):
    result = invoke("train", corpus_file, "--out", tmp_path / "o", *TINY, "--random-seed", 2**64)
    assert_error(result, 2, "--random-seed")
    ok = invoke(
        "train", corpus_file, "--out", tmp_path / "n", *TINY, "--max-steps", "1",
        "--random-seed", "-1", "--quiet",
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output  # documented: train takes torch's whole range


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["-n", "100000000000000"], "1,000,000,000,000"),  # the documented limit
        (["-n", str(10**23)], "--length"),
        (["--num-samples", str(10**11)], "65,536"),
        (["--num-samples", "1000", "-n", "10000000"], "would hold"),
    ],
    ids=["length-1e14", "length-1e23", "num-samples-1e11", "held-buffer"],
)
def test_absurd_sample_sizes_are_refused_before_printing(saved_run, options, needle):
    result = invoke("sample", "-c", saved_run / "best.pt", *options)
    assert_error(result, 2, needle)


def test_absurd_hidden_size_is_refused_before_allocating(tmp_path, corpus_file):
    out = tmp_path / "out"
    for option in (["--hidden-size", str(10**12)], ["--num-layers", str(10**9)]):
        started = time.monotonic()
        result = invoke("train", corpus_file, "--out", out, *TINY, *option)
        assert_error(result, 1, "GB", "memory")
        assert time.monotonic() - started < 30  # no layer was built
    assert not (out / "last.pt").exists()


# ------------------------------------------------- 13, 16. the output folder up front


@pytest.mark.parametrize("name", ["metrics.jsonl", "best.pt", "last.pt"])
def test_a_directory_where_a_run_writes_a_file_is_found_up_front(tmp_path, corpus_file, name):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    result = invoke(
        "train", corpus_file, "--out", out, *TINY, "--max-steps", "4", "--eval-every", "2",
        "--force",
    )  # fmt: skip
    assert_error(result, 1, name, "directory")
    assert not (out / "last.pt").is_file()


def test_a_dangling_symlink_as_out_says_so(tmp_path, corpus_file):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    result = invoke("train", corpus_file, "--out", link, *TINY, "--max-steps", "1")
    assert_error(result, 1, "symbolic link", "nowhere")


def test_a_checkpoint_through_a_pipe_is_read(saved_run):
    fifo_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    fifo = fifo_dir / f"charrnn-fifo-{os.getpid()}"
    os.mkfifo(fifo)
    data = (saved_run / "best.pt").read_bytes()

    def feed():
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        result = invoke("info", fifo, "--json")
    finally:
        writer.join(timeout=30)
        fifo.unlink()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == load_checkpoint(str(saved_run / "best.pt"))["step"]


def test_a_checkpoint_symlink_loop_is_not_called_missing(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.symlink_to(b)
    b.symlink_to(a)
    line = assert_error(invoke("info", a), 1, "symbolic link")
    assert "not found" not in line


# ----------------------------------------------------- 14. damaged checkpoints, and
#                                          issue 12's "never trust a checkpoint's numbers"


def _set(path: tuple, value):
    def damage(ckpt):
        target = ckpt
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return damage


_DELETE = object()


def _hidden(shape_change):
    def damage(ckpt):
        ckpt["hidden"] = shape_change(ckpt["hidden"])

    return damage


def _moment_shape(ckpt):
    state = ckpt["optimizer_state"]["state"]
    state[0]["exp_avg"] = torch.zeros(3, 3)


def _nan_weight(ckpt):
    ckpt["model_state"]["head.bias"][0] = math.nan


DAMAGE = {
    # resume only
    "hidden-wrong-shape": (_hidden(lambda h: [t[:, :1] for t in h]), ["resume"]),
    "hidden-three-tensors": (_hidden(lambda h: [*h, h[0]]), ["resume"]),
    "cursor-negative-window": (_set(("cursor", "window"), -3), ["resume"]),
    "moment-wrong-shape": (_moment_shape, ["resume"]),
    "train-config-none": (_set(("train_config",), None), ["resume", "info"]),
    "batch-size-0": (_set(("train_config", "batch_size"), 0), ["resume"]),
    # every command
    "dropout-5": (_set(("model_config", "dropout"), 5.0), ["resume", "info", "sample", "eval"]),
    "no-dropout": (_set(("model_config", "dropout"), _DELETE), ["info", "sample"]),
    "no-model": (_set(("model_config", "model"), _DELETE), ["info", "sample"]),
    "history-without-val-loss": (_set(("history", 0, "val_loss"), _DELETE), ["info"]),
    "history-a-string": (_set(("history",), "oops"), ["info"]),
    "corpus-a-list": (_set(("corpus",), ["x"]), ["info", "sample"]),
    "best-val-a-string": (_set(("best_val_loss",), "1.5"), ["info"]),
    "num-chars-none": (_set(("corpus", "num_chars"), None), ["info"]),
    "nan-weights": (_nan_weight, ["info", "sample", "eval", "resume"]),
    "100000-layers": (_set(("model_config", "num_layers"), 100000), ["info", "sample", "eval"]),
    "40000-units": (_set(("model_config", "hidden_size"), 40000), ["info", "sample", "resume"]),
    "vocab-unsorted": (lambda c: c["vocab"].reverse(), ["sample"]),
}
CASES = [(kind, command) for kind, (_, commands) in DAMAGE.items() for command in commands]


@pytest.mark.parametrize(("kind", "command"), CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_damaged_checkpoint_is_named_damaged(run_copy, corpus_file, kind, command):
    ckpt = load_checkpoint(str(run_copy / "last.pt"))
    DAMAGE[kind][0](ckpt)
    save_checkpoint(ckpt, str(run_copy / "last.pt"))
    before = file_bytes(run_copy)
    args = {
        "info": ["info", run_copy / "last.pt"],
        "sample": ["sample", "-c", run_copy / "last.pt", "-n", "5"],
        "eval": ["eval", "-c", run_copy / "last.pt", corpus_file],
        "resume": ["train", corpus_file, "--out", run_copy, "--resume", "--max-steps", "9"],
    }[command]
    started = time.monotonic()
    result = invoke(*args)
    # Refused at once, not after building 100,000 layers (minutes, gigabytes).
    assert time.monotonic() - started < 20
    assert_error(result, 1, "damaged")
    assert file_bytes(run_copy) == before


# ------------------------------------------------------------- 17. any stream encoding


def test_sample_writes_utf8_whatever_the_stream_encoding(tmp_path):
    text = "smile 😀 and wave 👋, again and again. " * 40
    tiny_run(text, str(tmp_path / "emoji"), max_steps=2, eval_every=2)
    proc = cli(
        "sample", "-c", tmp_path / "emoji" / "best.pt", "--seed", "😀", "-n", "40",
        env={**SUB_ENV, "PYTHONIOENCODING": "ascii"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode("utf-8").startswith("😀")


def test_no_lock_file_is_left_behind(tmp_path, corpus_file):
    out = tmp_path / "out"
    ok = invoke("train", corpus_file, "--out", out, *TINY, "--max-steps", "2", "--quiet")
    assert ok.exit_code == 0, ok.output
    failed = invoke("train", tmp_path / "missing.txt", "--out", out, *TINY, "--force")
    assert_error(failed, 1, "not found")
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
