"""Hardening, round three (issue 23, items 6, 7, 13, 14, 17, 18, 19): the command line.

One `error:` line naming the problem and a fix that works; exit 2 for the command line,
1 for a file's content or a checkpoint; no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import run_cli, tiny_run

import charrnn
from charrnn.checkpoint import load_checkpoint, save_checkpoint
from charrnn.cli.progress import fmt_epochs
from charrnn.cli.train import _why
from charrnn.config import parse_duration
from charrnn.errors import CheckpointError, UsageError

TEXT = "café au lait, café noir; le thé est là. " * 60


def one_error_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cafe(tmp_path_factory) -> str:
    """A tiny model whose vocabulary holds 'é' (and no '☃'); returns best.pt."""
    out = str(tmp_path_factory.mktemp("cafe"))
    tiny_run(TEXT, out, max_steps=4, eval_every=2, hidden_size=16, num_layers=1)
    return os.path.join(out, "best.pt")


# ------------------------------------------------- 7. a lone surrogate in the vocabulary


@pytest.mark.parametrize("command", ["info", "sample"])
def test_a_vocabulary_with_a_lone_surrogate_is_refused_at_load(cafe, tmp_path, command):
    ckpt = load_checkpoint(cafe)
    ckpt["vocab"][-1] = "\udfff"  # still sorted: U+DFFF is above every other character here
    bad = str(tmp_path / "surrogate.pt")
    save_checkpoint(ckpt, bad)
    args = ["info", bad] if command == "info" else ["sample", "-c", bad, "-n", "50"]
    proc = run_cli(*args)
    one_error_line(proc, 1, "damaged", "lone surrogate", "U+DFFF")
    assert proc.stdout == ""  # refused before anything was printed
    with pytest.raises(CheckpointError):
        charrnn.load(bad)


# ------------------------------------------- 13. a stop text the model never generates


def test_stop_at_a_character_the_model_never_generates_is_refused(cafe):
    proc = run_cli("sample", "-c", cafe, "--stop-at", "☃", "--length", "0", timeout=60)
    one_error_line(proc, 2, "--stop-at", "'☃'", "never")
    assert proc.stdout == ""
    model = charrnn.load(cafe)
    with pytest.raises(UsageError, match="stop_at="):
        model.sample(stop_at="x☃", length=5)
    # A stop text the model knows still ends the sample right after it.
    text = model.sample(seed="c", stop_at="é", length=2000, random_seed=1)
    assert text.endswith("é") and text.count("é") == 1


# ---------------------------------------- 14. arguments under a C locale, PYTHONUTF8=0


def test_a_seed_typed_in_utf8_is_read_as_utf8_under_a_c_locale(cafe):
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env["PYTHONCOERCECLOCALE"] = "0"  # Python would otherwise switch C to C.UTF-8
    run = [sys.executable, "-m", "charrnn", "sample", "-c", cafe, "-n", "5", "--random-seed", "1"]
    proc = subprocess.run(
        [*run, "--seed", "é", "--stop-at", "é", "--separator", "—", "--num-samples", "2"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8")
    assert out.startswith("é") and "—" in out
    # Bytes that are not UTF-8 are still refused, by name, not taken as something else.
    bad = subprocess.run([*run, "--seed", b"\xe9"], capture_output=True, env=env, timeout=60)
    assert bad.returncode == 2 and b"error: --seed" in bad.stderr


# ---------------------------------------------- 6. --seed-file in another encoding


def test_seed_file_in_latin1_names_an_option_sample_has(cafe, tmp_path):
    seed = tmp_path / "latin1.txt"
    seed.write_bytes("café au lait".encode("latin-1"))
    refused = run_cli("sample", "-c", cafe, "--seed-file", str(seed), "-n", "3")
    one_error_line(refused, 1, "not valid utf-8", "--encoding latin-1")
    # The advice works: sample has --encoding (for --seed-file).
    ok = run_cli("sample", "-c", cafe, "--seed-file", str(seed), "-n", "3", "--encoding", "latin-1")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("café au lait")
    bad = run_cli("sample", "-c", cafe, "--encoding", "rot13", "-n", "3")
    one_error_line(bad, 2, "--encoding", "not a text encoding")


# ------------------------------------ 19. escapes, typer's own errors, compound durations


@pytest.mark.parametrize("typed", ["\\q", "ab\\d", "\\é"])
def test_an_unknown_backslash_escape_is_refused_like_a_broken_one(cafe, typed):
    proc = run_cli("sample", "-c", cafe, "-n", "3", "--stop-at", typed)
    one_error_line(proc, 2, "--stop-at", "unknown backslash escape")
    broken = run_cli("sample", "-c", cafe, "-n", "3", "--stop-at", "\\x4")
    one_error_line(broken, 2, "--stop-at", "broken backslash escape")
    sep = run_cli("sample", "-c", cafe, "-n", "3", "--num-samples", "2", "--separator", typed)
    one_error_line(sep, 2, "--separator", "unknown backslash escape")


def test_known_escapes_and_an_escaped_backslash_still_work(cafe):
    proc = run_cli(
        "sample", "-c", cafe, "-n", "2", "--num-samples", "2", "--separator", "\\\\q\\t\\u00e9",
        "--random-seed", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\\q\té" in proc.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "x.txt", "--val-chars", "1e3"], ["--val-chars", "whole number", "train -h"]),
        (["sample", "--length", "1.5"], ["--length", "whole number"]),
        (["sample", "--temperature", "warm"], ["--temperature", "a number"]),
        (["train", "x.txt", "--no-such-option"], ["--no-such-option", "charrnn train -h"]),
        (["train"], ["Missing argument", "charrnn train -h"]),
    ],
)
def test_typers_own_errors_are_one_line_exit_2(args, words):
    proc = run_cli(*args)
    one_error_line(proc, 2, *words)
    assert "╭" not in proc.stderr and "Usage:" not in proc.stderr


def test_help_version_and_no_arguments_behave_as_before():
    assert run_cli("--version").stdout.startswith("charrnn ")
    shown = run_cli("sample", "-h")
    assert shown.returncode == 0 and "--encoding" in shown.stdout
    bare = run_cli()
    assert bare.returncode == 2 and "train" in bare.stdout and "error:" not in bare.stderr


@pytest.mark.parametrize(
    ("typed", "seconds"),
    [("1h30m", 5400), ("1h 30m", 5400), ("2m30s", 150), ("1d2h", 93600), ("90", 90), ("5m", 300)],
)
def test_compound_durations_are_accepted(typed, seconds):
    assert parse_duration(typed) == seconds


@pytest.mark.parametrize("typed", ["1h30", "30 1h", "1h-2m", "5mx", "", "1" * 5000 + "x"])
def test_durations_that_say_nothing_clear_are_refused(typed):
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(typed)


def test_a_compound_time_limit_is_taken_by_train(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    proc = run_cli("train", str(corpus), "--time-limit", "1h30m", "--out", str(tmp_path / "o"),
                   "--hidden-size", "8", "--num-layers", "1", "--max-steps", "2",
                   "--batch-size", "2", "--seq-len", "8", "--sample-length", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = run_cli("info", str(tmp_path / "o" / "best.pt"), "--json")
    assert '"time_limit": 5400.0' in info.stdout


# ------------------------------------------------------------- 18. dir(charrnn)


def test_dir_of_charrnn_lists_the_lazy_names():
    names = dir(charrnn)
    assert {"load", "train", "Model", "TrainingInterrupted", "__version__"} <= set(names)


# ------------------------------------------ 17. epochs, why a run stopped, folders


@pytest.mark.parametrize(
    ("epochs", "shown"),
    [(0.0613, "0.061"), (0.0, "0"), (2.5, "2.5"), (1.0, "1"), (9.96, "10"), (22.998, "23")],
)
def test_epochs_are_shown_to_two_significant_digits(epochs, shown):
    assert fmt_epochs(epochs) == shown


def test_done_line_and_info_agree_on_epochs_and_folders_have_one_slash(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    out = str(tmp_path / "poems") + "/"
    proc = run_cli("train", str(corpus), "--out", out, "--hidden-size", "8", "--num-layers",
                   "1", "--max-steps", "30", "--eval-every", "10", "--batch-size", "2",
                   "--seq-len", "8", "--sample-length", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    done = proc.stderr.strip().splitlines()[-1]
    assert f"checkpoints in {out}" in done and "//" not in done
    # 30 windows of 2 x 8 over (2400 * 0.9 - 1) // 2 // 8 = 134 per epoch: 0.22 epochs.
    assert "30 steps, 0.22 epochs" in done
    for name in ("best.pt", "last.pt"):
        info = run_cli("info", out + name)
        assert "trained      30 steps (0.22 epochs)" in info.stdout, info.stdout


def test_a_time_limited_run_that_ends_early_says_why():
    early = SimpleNamespace(stop_reason="time_limit", elapsed=27.0)
    why = _why(early, {"time_limit": "40s"})
    assert why.startswith("time limit: ended 13s before its 40s") and "final validation" in why
    assert "final validation" in _why(early, {})  # resumed: the limit came from the checkpoint
    assert _why(SimpleNamespace(stop_reason="max_steps", elapsed=1.0), {}) == "max steps"
