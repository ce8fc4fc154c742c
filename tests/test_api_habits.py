"""The Python API under ordinary Python habits (issue 18, part 5): paths as pathlib.Path,
numbers from numpy, wrong types, Ctrl-C and SIGTERM in a script, runs in threads.

The signal cases run a real script in a subprocess and signal it with os.kill while it
trains, as a terminal or a batch scheduler would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, shakespeare_head, tiny_run
from typer.testing import CliRunner

import charrnn
from charrnn.api import Prepared
from charrnn.cli import app
from charrnn.errors import UsageError
from charrnn.training import StepDone, StopRequest

# A small run's options, as a script would write them.
SMALL = dict(
    hidden_size=16, num_layers=1, batch_size=4, seq_len=16, eval_every=6, sample_length=0,
    precision="fp32", device="cpu",
)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("habits") / "corpus.txt"
    path.write_text(shakespeare_head(6000))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> charrnn.Model:
    out = tmp_path_factory.mktemp("habits") / "run"
    tiny_run(shakespeare_head(), str(out), max_steps=4, eval_every=4)
    return charrnn.load(out / "best.pt")


def cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stderr


def weights(path: Path | str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def same_weights(a: Path | str, b: Path | str) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----------------------------------------------------------- paths and numpy numbers


def test_paths_and_numpy_numbers_train_and_every_command_reads_the_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    sweep = np.linspace(4, 12, 3)  # np.float64 4.0, 8.0, 12.0: a sweep's max_steps
    options = {**SMALL, "hidden_size": np.int64(16), "eval_every": np.int32(6),
               "locked_dropout": np.bool_(True), "embed_dropout": np.float32(0.25)}  # fmt: skip
    result = charrnn.train(corpus, out, max_steps=sweep[2], lr=np.float32(0.004), **options)
    assert result.step == 12 and result.last_path == str(out / "last.pt")

    model = charrnn.load(out / "last.pt")  # a Path, as the caller has it
    train_config = model.checkpoint["train_config"]
    assert type(train_config["lr"]) is float and train_config["lr"] == float(np.float32(0.004))
    assert type(train_config["max_steps"]) is int and type(model.config.hidden_size) is int
    assert model.config.locked_dropout is True and type(model.config.embed_dropout) is float
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 12]

    info = run_cli("info", str(out / "last.pt"), "--json")  # a real process
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["train_config"]["max_steps"] == 12
    shown = run_cli("info", str(out / "last.pt")).stdout
    assert "dropout 0.2, locked, embedding dropout 0.25:" in shown, shown
    assert cli("sample", "-c", out / "last.pt", "-n", "20", "--random-seed", "1")[0] == 0
    code, stderr = cli("train", corpus, "--out", out, "--resume", "--max-steps", "14", "-q")
    assert code == 0, stderr
    assert charrnn.load(out / "last.pt").checkpoint["step"] == 14

    tuned = charrnn.train(
        [corpus], tmp_path / "tuned", init_from=out / "last.pt", max_steps=np.int64(2), **SMALL
    )
    assert tuned.step == 2
    lineage = charrnn.load(tmp_path / "tuned" / "last.pt").checkpoint["lineage"]
    assert lineage[0]["init_from"] == str(out / "last.pt")  # a str, not a Path
    assert cli("info", tmp_path / "tuned" / "last.pt")[0] == 0


# ------------------------------------------------------------------- refused at once


@pytest.mark.parametrize(
    "options, named",
    [
        ({"hidden_size": True}, "hidden_size="),
        ({"dropout": False}, "dropout="),
        ({"max_steps": np.bool_(True)}, "max_steps="),
        ({"locked_dropout": 1}, "locked_dropout="),
        ({"embed_dropout": 1.0}, "embed_dropout="),
        ({"lr": "0.004"}, "lr="),
        ({"max_steps": 2.5}, "max_steps="),
        ({"model": 3}, "model="),
        ({"device": 0}, "device="),
        ({"lr": -1}, "lr="),
        ({"stop": 5}, "stop="),
        ({"on_event": "print"}, "on_event="),
        ({"resume": "False"}, "resume="),
        ({"init_from": 3}, "init_from="),
        ({"cache_dir": b"cache"}, "cache_dir="),
        ({"encoding": None}, "encoding="),
    ],
)
def test_wrong_types_are_refused_by_name_before_anything_is_written(
    corpus, tmp_path, options, named
):
    out = tmp_path / "out"
    with pytest.raises(UsageError) as caught:
        charrnn.train(corpus, out, **{**SMALL, "max_steps": 3, **options})
    message = str(caught.value)
    assert named in message and "--" not in message, message
    assert isinstance(caught.value, ValueError)  # a Python caller's `except ValueError`
    assert not out.exists()


@pytest.mark.parametrize("corpus_arg", [b"corpus.txt", [b"corpus.txt"], 3, []])
def test_a_bytes_or_number_corpus_is_refused_not_opened_as_a_file_descriptor(
    corpus, tmp_path, monkeypatch, corpus_arg
):
    monkeypatch.chdir(corpus.parent)
    with pytest.raises(UsageError, match="corpus=") as caught:
        charrnn.train(corpus_arg, tmp_path / "out", max_steps=3, **SMALL)
    assert "descriptor" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_errors_name_the_arguments_and_the_cli_keeps_its_flags(model, corpus, tmp_path):
    refused = [
        (lambda: model.sample(temperature=-1), "temperature="),
        (lambda: model.sample(temperature="hot"), "temperature="),
        (lambda: model.sample(top_k=True), "top_k="),
        (lambda: model.sample(top_p=2), "top_p="),
        (lambda: model.sample(length="5"), "length="),
        (lambda: model.sample(seed=5), "seed="),
        (lambda: model.stream(stop_at=3), "stop_at="),  # at the call, not at next()
        (lambda: model.score(b"to be"), "text="),
        (lambda: charrnn.load(5), "path="),
        (lambda: charrnn.load(b"best.pt"), "path="),
        (lambda: charrnn.load(model.path, device=0), "device="),
        (lambda: charrnn.load(model.path, device="gpu"), "device='gpu'"),
        (lambda: charrnn.train(corpus, tmp_path / "a", resume=True, force=True), "force=True"),
    ]
    for call, named in refused:
        with pytest.raises(UsageError) as caught:
            call()
        assert named in str(caught.value) and "--" not in str(caught.value), str(caught.value)
    # numpy's numbers are welcome in sampling too
    text = model.sample(seed="A", length=np.int64(5), temperature=np.float32(0.5), random_seed=1)
    assert text == model.sample(seed="A", length=5, temperature=0.5, random_seed=1)

    code, stderr = cli("train", corpus, "--out", tmp_path / "b", "--lr", "-1")
    assert code == 2 and "--lr must be" in stderr and "lr=" not in stderr
    code, stderr = cli("sample", "-c", model.path, "--temperature", "-1")
    assert code == 2 and "--temperature must be" in stderr


# ------------------------------------------------------------------ signals in a script

SCRIPT = """
import json, sys
import charrnn

def on_event(event):
    if type(event).__name__ == "StepDone" and event.step == 1:
        print("training", flush=True)  # the test signals from here on

try:
    charrnn.train(sys.argv[1], out=sys.argv[2], hidden_size=16, num_layers=1, batch_size=4,
                  seq_len=16, max_steps=10**6, eval_every=10**6, sample_length=0,
                  device="cpu", precision="fp32", on_event=on_event)
except charrnn.TrainingInterrupted as e:
    print(json.dumps({"step": e.result.step, "last_path": e.result.last_path,
                      "reason": e.result.stop_reason,
                      "keyboard": isinstance(e, KeyboardInterrupt)}), flush=True)
    raise
print("returned", flush=True)
"""


def signalled(corpus: Path, out: Path, signum: int) -> subprocess.CompletedProcess:
    """Run SCRIPT, send `signum` once it is training, and wait for it to end."""
    script = out.parent / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(corpus), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, proc.kill)  # readline() has no timeout of its own
    watchdog.start()
    try:
        assert proc.stdout.readline() == "training\n", proc.stderr.read()
        os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_in_a_script_saves_last_pt_then_raises_training_interrupted(corpus, tmp_path):
    out = tmp_path / "run"
    proc = signalled(corpus, out, signal.SIGINT)
    caught = json.loads(proc.stdout)  # the script caught it, printed the result, re-raised
    assert caught["reason"] == "SIGINT" and caught["keyboard"] is True
    assert caught["last_path"] == str(out / "last.pt") and caught["step"] >= 1
    # Uncaught, it ends the script like any exception: exit 1, one traceback, whose only
    # charrnn frame is the call that raised it and whose last line says where it saved.
    assert proc.returncode == 1 and proc.stderr.count("Traceback") == 1, proc.stderr
    frames = [line for line in proc.stderr.splitlines() if line.strip().startswith("File ")]
    inside = [f for f in frames if f"{os.sep}charrnn{os.sep}" in f]
    assert len(inside) == 1 and "python_train" in inside[0], proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("charrnn.errors.TrainingInterrupted: ") and "Ctrl-C" in last
    assert f"saved {out / 'last.pt'}" in last and "resume=True" in last

    assert torch.load(out / "last.pt", weights_only=True)["step"] == caught["step"]
    more = charrnn.train(corpus, out, resume=True, max_steps=caught["step"] + 2)
    assert more.step == caught["step"] + 2 and more.stop_reason == "max_steps"


def test_sigterm_in_a_script_saves_last_pt_then_ends_it_by_sigterm(corpus, tmp_path):
    out = tmp_path / "run"
    proc = signalled(corpus, out, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM, proc.stderr  # as if no one had caught it
    assert proc.stdout == "" and proc.stderr == ""
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert step >= 1
    assert charrnn.train(corpus, out, resume=True, max_steps=step + 1).step == step + 1


@pytest.mark.parametrize("when", ["preparing", "twice"])
def test_ctrl_c_before_training_or_twice_stops_at_once_with_a_plain_keyboard_interrupt(
    corpus, tmp_path, when
):
    """Signalled from inside the run (the handler runs in this, the main thread): while
    the corpus is prepared there is nothing to save; a second Ctrl-C does not wait."""

    def on_event(event):
        if when == "preparing" and isinstance(event, Prepared):
            signal.raise_signal(signal.SIGINT)
        if when == "twice" and isinstance(event, StepDone) and event.step == 1:
            signal.raise_signal(signal.SIGINT)  # the first asks for a clean stop
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as caught:
        charrnn.train(corpus, tmp_path / "run", max_steps=50, on_event=on_event, **SMALL)
    assert type(caught.value) is KeyboardInterrupt  # not TrainingInterrupted: nothing saved
    assert not (tmp_path / "run" / "last.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signal_handlers_are_charrnns_only_during_the_call_and_never_a_scripts(corpus, tmp_path):
    seen = []
    record = lambda event: seen.append(signal.getsignal(signal.SIGINT))  # noqa: E731
    charrnn.train(corpus, tmp_path / "a", max_steps=1, on_event=record, **SMALL)
    assert seen[-1] is not signal.default_int_handler  # charrnn's, during the call
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, own)
    try:
        seen.clear()
        charrnn.train(corpus, tmp_path / "b", max_steps=1, on_event=record, **SMALL)
        assert seen and all(handler is own for handler in seen)
    finally:
        signal.signal(signal.SIGINT, previous)
    seen.clear()
    charrnn.train(corpus, tmp_path / "c", max_steps=1, on_event=record, stop=StopRequest(), **SMALL)
    assert seen and all(handler is signal.default_int_handler for handler in seen)


# ------------------------------------------------------------------------ threads


def in_thread(fn) -> dict:
    """Run fn() in a new thread; returns {"result": ...} or {"error": ...} once it ends."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = fn()
        except Exception as e:  # handed to the test to check
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return {"thread": thread, "outcome": outcome}


def test_a_second_concurrent_train_is_refused_and_the_first_is_the_single_run(corpus, tmp_path):
    single = charrnn.train(corpus, tmp_path / "single", max_steps=8, **SMALL)
    first_training, second_tried = threading.Event(), threading.Event()

    def hold(event):  # the first run waits, mid-run, until the second has tried
        if isinstance(event, StepDone) and event.step == 1:
            first_training.set()
            assert second_tried.wait(60)

    first = in_thread(
        lambda: charrnn.train(corpus, tmp_path / "first", max_steps=8, on_event=hold, **SMALL)
    )
    assert first_training.wait(120)
    second = in_thread(lambda: charrnn.train(corpus, tmp_path / "second", max_steps=8, **SMALL))
    second["thread"].join(60)
    second_tried.set()
    first["thread"].join(120)

    error = second["outcome"].get("error")
    assert isinstance(error, UsageError), second["outcome"]
    assert "another charrnn.train is running in this process" in str(error)
    assert "one after another, or in separate processes" in str(error)
    assert not (tmp_path / "second").exists()
    assert first["outcome"]["result"].step == 8, first["outcome"]
    assert same_weights(single.last_path, tmp_path / "first" / "last.pt")


def test_runs_one_after_another_in_threads_train_and_match(corpus, tmp_path):
    results = []
    for name in ("a", "b"):
        run = in_thread(
            lambda name=name: charrnn.train(corpus, tmp_path / name, max_steps=6, **SMALL)
        )
        run["thread"].join(120)
        results.append(run["outcome"].get("result"))
    assert [r.step for r in results] == [6, 6], results
    assert same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
