"""A smoke test of every command: is this install whole? (`make smoke`, a few seconds.)

Each command runs once on a tiny model and a tiny text, in process, and must succeed and
print what it is for; the installed `charrnn` script is started once, as a user would.
Correctness is the rest of the suite's job (`make test`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import TEXT, TINY, invoke


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = folder / "run"
    args = ["train", corpus, "--out", out, *TINY, "--max-steps", "4", "--eval-every", "2"]
    result = invoke(*args, "--cache-dir", folder / "cache")
    assert result.exit_code == 0, result.output
    return corpus, out


def test_train(run):
    _, out = run
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_sample(run):
    _, out = run
    result = invoke("sample", "-c", out / "best.pt", "-n", "40", "--random-seed", "1")
    assert result.exit_code == 0, result.output
    assert len(result.stdout) >= 40


def test_eval(run):
    corpus, out = run
    result = invoke("eval", "-c", out / "best.pt", corpus, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss_nats"] > 0


def test_info(run):
    _, out = run
    result = invoke("info", out / "last.pt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["step"] == 4


def test_plot(run):
    _, out = run
    result = invoke("plot", out)
    assert result.exit_code == 0, result.output
    assert "2 evaluations to step 4" in result.stdout


@pytest.mark.parametrize("command", ["neurons", "gradients"])
def test_inspect_commands(run, command):
    corpus, out = run
    extra = ["--max-distance", "8", "--positions", "4"] if command == "gradients" else []
    result = invoke(command, out / "best.pt", corpus, "--json", *extra)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


def test_novelty(run, tmp_path):
    corpus, _ = run
    sample = tmp_path / "sample.txt"
    sample.write_text(TEXT[:200], encoding="utf-8")
    result = invoke("novelty", sample, "--corpus", corpus, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


def test_the_installed_script_starts(run):
    _, out = run
    # The script beside this Python (the venv's), else the one on PATH.
    beside = Path(sys.executable).parent / "charrnn"
    script = str(beside) if beside.exists() else shutil.which("charrnn")
    if script is None:
        pytest.skip("no charrnn script installed")
    result = subprocess.run(
        [script, "info", str(out / "last.pt")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout
