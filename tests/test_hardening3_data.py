"""Hardening, round three (issue 23): the data side, the checkpoint's write side, the run.

Each test reproduces what the issue found and checks the behaviour that fixes it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import SUB_ENV, TEXT, TINY, assert_error, invoke


def cli(*args, env=None, umask: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """`python -m charrnn ARGS` in a subprocess (under `umask` when given), text out."""
    command = [sys.executable, "-m", "charrnn", *map(str, args)]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *command]
    return subprocess.run(
        command, env=env or SUB_ENV, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------- 12: the files' mode


@pytest.mark.parametrize(("umask", "expected"), [("022", 0o644), ("077", 0o600)])
def test_checkpoints_and_cache_entries_follow_the_umask(tmp_path, umask, expected):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**SUB_ENV, "CHARRNN_CACHE_DIR": str(cache)}
    args = ["train", corpus, "--out", out, *TINY, "--max-steps", "2", "--quiet"]
    result = cli(*args, env=env, umask=umask)
    assert result.returncode == 0, result.stderr
    written = [out / "last.pt", out / "best.pt", *sorted(cache.iterdir())]
    assert len(written) == 4  # the two checkpoints, the entry's .ids and .json
    assert {p.name: mode(p) for p in written} == {p.name: expected for p in written}


# ------------------------------------------- 10: a resumed run on the wrong process count


def test_a_resumed_run_on_a_process_count_that_does_not_divide_names_the_counts_that_do():
    from charrnn.distributed import World, check_batch
    from charrnn.errors import UsageError

    with pytest.raises(UsageError) as caught:
        check_batch(4, World(size=3, launched=True), resumed=True)
    message = str(caught.value)
    # Not "--batch-size": a resumed run cannot change it. The process counts that work:
    assert "give a multiple" not in message and "resume it on 1, 2 or 4 processes" in message
    for count in (1, 2, 4):
        check_batch(4, World(size=count, launched=True), resumed=True)
    with pytest.raises(UsageError, match="resume it on 1 or 5 processes"):
        check_batch(5, World(size=2, launched=True), resumed=True)
    # A new run may still change its batch size, and is told so.
    with pytest.raises(UsageError, match="give a multiple of 3"):
        check_batch(4, World(size=3, launched=True))


# ------------------------------------------------- 11: a held-out part that is too small


def test_a_tiny_val_fraction_says_to_raise_it_and_the_fraction_it_names_works(tmp_path):
    import re

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out"
    line = assert_error(
        invoke("train", corpus, "--out", out, *TINY, "--val-fraction", "1e-9"),
        1,
        "too little for validation",
        "raise --val-fraction to",
    )
    assert "--batch-size" not in line and "2000000001" not in line  # not 2e9 characters
    fraction = re.search(r"raise --val-fraction to (\S+) or more", line).group(1)
    result = invoke(
        "train", corpus, "--out", out, *TINY, "--val-fraction", fraction, "--max-steps", "1"
    )
    assert result.exit_code == 0, result.output


def test_a_tiny_val_fraction_on_a_short_corpus_names_a_fraction_and_a_length_that_work(
    tmp_path,
):
    import re

    short = tmp_path / "short.txt"
    short.write_text("abcdef" * 5)
    line = assert_error(
        invoke("train", short, "--out", tmp_path / "out", *TINY, "--val-fraction", "1e-9"),
        1,
        "raise --val-fraction",
    )
    match = re.search(r"to (\S+), say\) and give at least (\d+) characters", line)
    fraction, need = match.group(1), int(match.group(2))
    enough = tmp_path / "enough.txt"
    enough.write_text(("abcdef" * need)[:need])
    result = invoke(
        "train", enough, "--out", tmp_path / "o2", *TINY, "--val-fraction", fraction,
        "--max-steps", "1", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


# ------------------------------------------------------- 20: where the id cache goes


def test_an_empty_home_is_looked_up_not_taken_as_the_root(monkeypatch, tmp_path):
    import pwd

    from charrnn import idcache
    from charrnn.errors import CacheError

    monkeypatch.delenv("CHARRNN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", "")
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert idcache.default_cache_dir() == os.path.join(home, ".cache", "charrnn")
    assert not idcache.default_cache_dir().startswith("/.cache")

    class NoEntry:
        pw_dir = "/"

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: NoEntry())
    with pytest.raises(CacheError, match="pass --cache-dir"):
        idcache.default_cache_dir()
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path))  # the fix the message names
    assert idcache.default_cache_dir() == str(tmp_path)


def test_a_relative_xdg_cache_home_is_ignored_as_the_spec_says(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {k: v for k, v in SUB_ENV.items() if k != "CHARRNN_CACHE_DIR"}
    env.update(HOME=str(home), XDG_CACHE_HOME="relative-cache")
    args = ["train", corpus, "--out", tmp_path / "out", *TINY, "--max-steps", "1", "--quiet"]
    result = cli(*args, env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []  # nothing in the current folder
    assert len(list((home / ".cache" / "charrnn").glob("*.ids"))) == 1
    # An absolute one is used.
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert cli(*args, "--force", env=env, cwd=work).returncode == 0
    assert len(list((tmp_path / "xdg" / "charrnn").glob("*.ids"))) == 1


# ----------------------------------------------- 21: cache folders, entries, lineage


def test_a_read_only_cache_folder_is_called_read_only_not_permission_denied(tmp_path, monkeypatch):
    import errno
    import tempfile

    from charrnn import idcache
    from charrnn.errors import CacheError
    from charrnn.sources import resolve as resolve_sources

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(CacheError) as caught:
        idcache.prepare(resolve_sources([str(corpus)], "utf-8"), "utf-8", str(tmp_path / "c"))
    message = str(caught.value)
    assert "read-only file system" in message and "permission denied" not in message
    assert "pass --cache-dir" in message


def test_a_cache_entry_that_is_a_folder_is_named_as_one_and_left_alone(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["train", corpus, "--out", tmp_path / "out", *TINY, "--max-steps", "1", "--quiet"]
    args += ["--cache-dir", cache]
    assert invoke(*args).exit_code == 0
    (ids,) = cache.glob("*.ids")
    ids.unlink()
    ids.mkdir()
    (ids / "keep.txt").write_text("mine")
    result = invoke(*args, "--force")
    line = assert_error(result, 1, "is a folder, not a file", f"rm -r {ids}", "--cache-dir")
    assert "truncated" not in result.stderr and "Is a directory" not in line
    assert (ids / "keep.txt").read_text() == "mine"  # nothing lost
    assert sorted(p.name for p in cache.iterdir()) == sorted([ids.name, ids.stem + ".json"])
    # The fix the message names works.
    import shutil

    shutil.rmtree(ids)
    assert invoke(*args, "--force").exit_code == 0


def test_info_of_a_fine_tune_whose_source_was_replaced_says_the_file_is_another_model(tmp_path):
    from charrnn.checkpoint import load_checkpoint
    from charrnn.finetune import weights_digest

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    base = ["train", corpus, "--out", run, *TINY, "--max-steps", "2", "--quiet"]
    assert invoke(*base).exit_code == 0
    source = run / "last.pt"
    digest = weights_digest(load_checkpoint(str(source))["model_state"])
    # A fine-tune elsewhere: its source file still holds the source model.
    tuned = tmp_path / "tuned"
    tune = ["--init-from", source, "--max-steps", "2", "--quiet", "--device", "cpu"]
    assert invoke("train", corpus, "--out", tuned, *tune).exit_code == 0
    result = invoke("info", tuned / "last.pt")
    assert result.exit_code == 0, result.output
    assert f"sha256 {digest[:16]}; that file still holds them" in result.stdout
    # A fine-tune with --force into the source's own folder replaces the source.
    result = invoke("train", corpus, "--out", run, *tune, "--force")
    assert result.exit_code == 0, result.output
    result = invoke("info", run / "last.pt")
    assert f"sha256 {digest[:16]}; that file now holds a different model" in result.stdout
    entry = json.loads(invoke("info", run / "last.pt", "--json").stdout)["lineage"][0]
    assert entry["weights_sha256"] == digest and "different model" in entry["source_now"]


# ------------------------------------------- 15: a training-loss curve between evaluations


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_training_loss_is_logged_for_a_curve_once_per_step_even_across_a_resume(tmp_path):
    from conftest import shakespeare_head, tiny_run

    from charrnn.checkpoint import load_checkpoint
    from charrnn.inspect.curves import read_run
    from charrnn.training import StepDone, StopRequest
    from charrnn.training.evaluator import TRAIN_LOSS_EVERY

    assert TRAIN_LOSS_EVERY == 25
    text = shakespeare_head(6000)
    small = {"hidden_size": 16, "num_layers": 1, "max_steps": 110, "eval_every": 100}
    full = tmp_path / "full"
    tiny_run(text, str(full), **small)
    records = _records(full)
    train = {r["step"]: r["train_loss"] for r in records if "val_loss" not in r}
    assert list(train) == [25, 50, 75, 100]  # a point every 25 steps, not only at evaluations
    assert [r["step"] for r in records if "val_loss" in r] == [100, 110]
    assert train[100] < train[25]  # it learns: the curve goes down
    curve = read_run(str(full))
    assert (curve.train_steps, curve.train_loss) == (list(train), list(train.values()))
    assert curve.steps == [100, 110]

    # Stopped at step 50 and resumed: each step logged once, the values of the run never
    # stopped. A killed run that had logged step 75 past its last.pt: not logged twice.
    for killed in (False, True):
        part = tmp_path / f"part-{killed}"
        stop = StopRequest()

        def stop_at_50(event, stop=stop):
            if isinstance(event, StepDone) and event.step == 50:
                stop.set("SIGINT")

        result, _ = tiny_run(text, str(part), stop=stop, on_event=stop_at_50, **small)
        assert result.step == 50
        if killed:
            with open(part / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": 75, "train_loss": train[75]}) + "\n")
        tiny_run(text, str(part), resume=load_checkpoint(str(part / "last.pt")))
        again = {r["step"]: r["train_loss"] for r in _records(part) if "val_loss" not in r}
        steps = [r["step"] for r in _records(part) if "val_loss" not in r]
        assert steps == [25, 50, 75, 100] and again == train


def test_plot_reads_a_metrics_file_from_before_the_training_loss_lines(tmp_path):
    from charrnn.inspect.curves import read_run

    old = [
        {"step": 10, "val_loss": 3.0, "train_loss": 3.2},
        {"step": 20, "val_loss": 2.5, "train_loss": 2.7},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    curve = read_run(str(tmp_path))
    assert curve.steps == [10, 20] and curve.val_loss == [3.0, 2.5]
    assert curve.train_steps == [10, 20] and curve.train_loss == [3.2, 2.7]


def test_a_force_run_that_fails_before_its_first_save_leaves_the_old_metrics_alone(tmp_path):
    from conftest import shakespeare_head, tiny_run

    from charrnn.training import StepDone

    text = shakespeare_head(6000)
    out = tmp_path / "run"
    tiny_run(text, str(out), hidden_size=16, num_layers=1, max_steps=4, eval_every=2)
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}

    def crash_at_60(event):
        if isinstance(event, StepDone) and event.step == 60:
            raise RuntimeError("crash")

    small = {"hidden_size": 16, "num_layers": 1, "max_steps": 200, "eval_every": 100}
    with pytest.raises(RuntimeError, match="crash"):
        tiny_run(text, str(out), on_event=crash_at_60, **small)  # lines at 25, 50 held
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before
