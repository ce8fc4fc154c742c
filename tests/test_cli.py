"""The CLI as a user runs it: real subprocesses, real files, real pipes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import run_cli, shakespeare_head

TINY = ["--hidden-size", "32", "--batch-size", "4", "--seq-len", "16", "--eval-every", "10"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`charrnn train corpus.txt` on a small file, as a user would type it."""
    folder = tmp_path_factory.mktemp("cli")
    corpus = folder / "corpus.txt"
    corpus.write_text(shakespeare_head(8000), encoding="utf-8")
    out = folder / "ckpt"
    proc = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "20", *TINY)
    assert proc.returncode == 0, proc.stderr
    return folder, corpus, out, proc


def test_train_from_a_file_reports_on_stderr_only(cli_run):
    _, _, out, proc = cli_run
    assert proc.stdout == ""
    assert "val loss" in proc.stderr and "done: 20 steps" in proc.stderr
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # Logs to a file or pipe: each message is one line, whatever its length, for grep.
    lines = proc.stderr.splitlines()
    assert any(line.startswith("training from step 0:") and "stops at" in line for line in lines)
    assert all(line.startswith(("corpus", "training", "step", "done", "warning")) for line in lines)


def test_train_from_stdin(tmp_path):
    out = tmp_path / "ckpt"
    proc = run_cli(
        "train", "-", "--out", str(out), "--max-steps", "5", "--quiet", *TINY,
        input=shakespeare_head(5000),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and (out / "last.pt").exists()


def test_sample_prints_seed_then_exactly_length_characters(cli_run):
    _, _, out, _ = cli_run
    ckpt = str(out / "best.pt")
    proc = run_cli("sample", "-c", ckpt, "--seed", "ROMEO", "--length", "300", "--random-seed", "1")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("ROMEO") and len(proc.stdout) == 5 + 300 + 1  # + final \n
    again = run_cli(
        "sample", "-c", ckpt, "--seed", "ROMEO", "--length", "300", "--random-seed", "1"
    )
    assert again.stdout == proc.stdout


def test_several_samples_are_separated(cli_run):
    _, _, out, _ = cli_run
    proc = run_cli(
        "sample", "-c", str(out / "best.pt"), "--seed", "A", "--length", "50",
        "--num-samples", "3", "--separator", "\\n=====\\n", "--random-seed", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    parts = proc.stdout[:-1].split("\n=====\n")
    assert len(parts) == 3 and all(len(p) == 51 and p[0] == "A" for p in parts)


def test_sample_into_head_ends_quietly(cli_run):
    _, _, out, _ = cli_run
    cmd = (
        f"{sys.executable} -m charrnn sample -c {out / 'best.pt'} --length 200000 "
        '| head -c 100; echo " rc=${PIPESTATUS[0]}"'
    )
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.stdout.endswith(" rc=0\n"), proc.stdout[-50:]
    assert len(proc.stdout) == 100 + len(" rc=0\n")
    assert proc.stderr == ""


def test_a_seed_outside_the_vocabulary_is_named(cli_run):
    _, _, out, _ = cli_run
    proc = run_cli("sample", "-c", str(out / "best.pt"), "--seed", "Hé✓")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "'é', '✓'" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_scores_a_text_as_json(cli_run):
    _, corpus, out, _ = cli_run
    proc = run_cli("eval", "-c", str(out / "best.pt"), str(corpus), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["num_chars"] == 8000 and result["num_predicted"] == 7999
    assert result["bits_per_char"] == pytest.approx(result["loss_nats"] / math.log(2))
    assert 0 < result["loss_nats"] < math.log(65)  # better than uniform guessing


def test_eval_of_a_text_with_unknown_characters_names_them(cli_run, tmp_path):
    _, _, out, _ = cli_run
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("ROMEO: 안녕 ✓", encoding="utf-8")
    proc = run_cli("eval", "-c", str(out / "best.pt"), str(foreign))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "'✓', '녕', '안'" in proc.stderr and "Traceback" not in proc.stderr


def test_info_describes_the_checkpoint(cli_run):
    _, _, out, _ = cli_run
    proc = run_cli("info", str(out / "last.pt"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model"]["model"] == "lstm" and info["model"]["hidden_size"] == 32
    assert info["step"] == 20 and info["best_val_loss"] > 0
    assert info["num_params"] > 0 and info["vocab_size"] == len(info["vocab"])
    text = run_cli("info", str(out / "last.pt"))
    assert "parameters" in text.stdout and "best val" in text.stdout
    # `-c`, as sample and eval take it, names the same file; two different files are refused.
    assert run_cli("info", "-c", str(out / "last.pt")).stdout == text.stdout
    both = run_cli("info", str(out / "best.pt"), "-c", str(out / "last.pt"))
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.count("\n") == 1 and "two checkpoints given" in both.stderr


def test_an_existing_run_is_refused_then_resumed(cli_run):
    _, corpus, out, _ = cli_run
    before = (out / "last.pt").read_bytes()
    proc = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "5", *TINY)
    assert proc.returncode == 1 and "--resume" in proc.stderr and "--force" in proc.stderr
    assert (out / "last.pt").read_bytes() == before
    proc = run_cli("train", str(corpus), "--out", str(out), "--resume", "--max-steps", "25")
    assert proc.returncode == 0, proc.stderr
    assert "resuming at step 20" in proc.stderr and "done: 25 steps" in proc.stderr
    proc = run_cli("train", str(corpus), "--out", str(out), "--resume", "--lr", "0.5")
    assert proc.returncode == 2 and "--lr cannot change" in proc.stderr


def test_messages_show_paths_with_brackets_as_typed(tmp_path):
    corpus = tmp_path / "notes [draft].txt"
    corpus.write_text(shakespeare_head(5000), encoding="utf-8")
    out = tmp_path / "run[bold]1"
    proc = run_cli("train", str(corpus), "--out", str(out), "--max-steps", "2", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoints in {out}/" in proc.stderr  # not eaten as rich markup
