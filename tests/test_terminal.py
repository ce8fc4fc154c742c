"""charrnn as a person runs it: in a terminal, with the live display on, stopped with
Ctrl-C. (The rest of the suite pipes stderr, where the display is off: a run that hung in
every real terminal once passed it.)"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import pytest
import torch
from conftest import shakespeare_head
from terminal import CTRL_C, ROOT, Terminal, needs_pty

pytestmark = [needs_pty, pytest.mark.slow]

CHARRNN = [sys.executable, "-m", "charrnn"]
TINY = ["--hidden-size", "32", "--num-layers", "1", "--batch-size", "8", "--seq-len", "32"]
TINY += ["--device", "cpu", "--precision", "fp32", "--sample-length", "40"]
BAR = "━"  # rich's progress bar: proof that the live display, not the log lines, was drawn


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "c.txt"
    path.write_text(shakespeare_head(60000), encoding="utf-8")
    return str(path)


def _step(ckpt: str) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["step"]


def test_train_in_a_terminal_shows_the_live_display_and_finishes(tmp_path, corpus):
    out = str(tmp_path / "run")
    argv = [*CHARRNN, "train", corpus, *TINY, "--max-steps", "60", "--eval-every", "30"]
    with Terminal([*argv, "--out", out], cwd=str(tmp_path)) as term:
        code = term.wait(timeout=120)
        screen = term.text
    assert code == 0, screen[-3000:]
    assert BAR in screen and "sample at step" in screen  # the live bar and its sample panel
    assert "done: 60 steps" in screen and "Traceback" not in screen
    assert _step(os.path.join(out, "best.pt")) == 60


@pytest.mark.parametrize(
    ("how", "code", "name"), [("ctrl-c", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")]
)
def test_a_signal_during_training_in_a_terminal_saves_and_stops(tmp_path, corpus, how, code, name):
    out = str(tmp_path / "run")
    argv = [*CHARRNN, "train", corpus, *TINY, "--max-steps", "100000", "--eval-every", "20"]
    with Terminal([*argv, "--out", out], cwd=str(tmp_path)) as term:
        term.expect(r"sample at step 20")  # training, with the display on
        began = time.monotonic()
        if how == "ctrl-c":
            term.send(CTRL_C)
        else:
            os.kill(term.proc.pid, signal.SIGTERM)
        status = term.wait(timeout=30)
        took = time.monotonic() - began
        screen = term.text
    assert status == code, screen[-3000:]
    assert took < 10, f"took {took:.1f}s to stop"
    assert f"stopped by {name} at step" in screen and "Traceback" not in screen
    assert _step(os.path.join(out, "last.pt")) >= 20
    assert not os.path.exists(os.path.join(out, ".lock"))


# A run whose stopping save hangs (a stuck disk, say): the watchdog must end it anyway.
_STUCK_SAVE = textwrap.dedent(
    """
    import sys, time
    import charrnn.cli as cli, charrnn.cli.signals as signals
    import charrnn.training as training, charrnn.training.state as state
    signals.STOP_GRACE_SECONDS = 4.0
    save, ask = state.RunState.save, training.StopRequest.set
    asked = []
    def stuck(self, also_best):
        if asked:
            time.sleep(600)
        return save(self, also_best)
    def set_and_note(self, reason="interrupted"):
        asked.append(reason)
        ask(self, reason)
    state.RunState.save = stuck
    training.StopRequest.set = set_and_note
    sys.argv = ["charrnn", *sys.argv[1:]]
    cli.main()
    """
)


@pytest.mark.parametrize("second", [False, True], ids=["watchdog", "second-ctrl-c"])
def test_a_run_that_cannot_stop_is_ended_anyway(tmp_path, corpus, second):
    out = str(tmp_path / "run")
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK_SAVE)
    argv = [sys.executable, str(script), "train", corpus, *TINY, "--max-steps", "100000"]
    with Terminal([*argv, "--eval-every", "20", "--out", out], cwd=str(tmp_path)) as term:
        term.expect(r"sample at step 20")
        term.send(CTRL_C)
        term.expect(r"stopping after this step and saving \(press Ctrl-C again", timeout=10)
        began = time.monotonic()
        if second:
            term.send(CTRL_C)
        status = term.wait(timeout=30)
        took = time.monotonic() - began
        screen = term.text
    assert status == 130, screen[-3000:]
    assert "Traceback" not in screen
    last = os.path.join(out, "last.pt")
    if second:
        assert took < 3, f"took {took:.1f}s"
        assert f"stopped at once; {last} holds the last save" in screen
    else:
        assert 1.5 < took < 8, f"took {took:.1f}s"
        assert f"did not stop within 4s of SIGINT; ended it; {last} holds the newest save" in (
            screen.replace("\r\n", "\n").replace("\n", " ")
        )
    # The newest evaluation's save is intact (the stuck stopping save never replaced it). A
    # tiny step takes a millisecond: on a loaded machine Ctrl-C may land an evaluation later.
    step = _step(last)
    assert step >= 20 and step % 20 == 0, step


def test_sample_in_a_terminal_streams_and_stops_on_ctrl_c(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    with Terminal([*CHARRNN, "sample", "-c", ckpt, "--seed", "ROMEO:", "-n", "200"]) as term:
        assert term.wait(timeout=60) == 0
        assert term.text.startswith("ROMEO:") and len(term.text) > 200
    with Terminal([*CHARRNN, "sample", "-c", ckpt, "--length", "0"]) as term:
        term.expect(r"\S{3}", timeout=60)  # generating, without end
        term.send(CTRL_C)
        assert term.wait(timeout=15) == 130
        assert "Traceback" not in term.text


def test_train_with_two_processes_in_a_terminal(tmp_path, corpus):
    out = str(tmp_path / "run")
    argv = [*CHARRNN, "train", corpus, *TINY, "--max-steps", "40", "--eval-every", "20"]
    with Terminal([*argv, "--nproc-per-node", "2", "--out", out], cwd=str(tmp_path)) as term:
        code = term.wait(timeout=180)
        screen = term.text
    assert code == 0, screen[-3000:]
    assert "2 CPU processes" in screen and BAR in screen and "done: 40 steps" in screen
    assert _step(os.path.join(out, "best.pt")) == 40


def test_make_demo_in_a_terminal(tmp_path, corpus):
    """`make demo`'s two commands, as typed at a prompt (a short limit and a small text)."""
    out = str(tmp_path / "demo")
    args = [f"DEMO_OUT={out}", "DEMO_LIMIT=8s", f"CORPUS={corpus}", f"VENV={_venv()}"]
    args.append("DEMO_ARGS=" + " ".join(TINY))
    with Terminal(["make", "--no-print-directory", "-C", ROOT, "demo", *args]) as term:
        code = term.wait(timeout=180)
        screen = term.text
    assert code == 0, screen[-3000:]
    assert BAR in screen and "done:" in screen and "ROMEO:" in screen
    assert os.path.exists(os.path.join(out, "best.pt"))


def test_ctrl_c_under_make_leaves_no_run_behind(tmp_path, corpus):
    out = str(tmp_path / "demo")
    args = [f"DEMO_OUT={out}", "DEMO_LIMIT=10m", f"CORPUS={corpus}", f"VENV={_venv()}"]
    args += ["DEMO_ARGS=" + " ".join([*TINY, "--eval-every", "20"])]
    with Terminal(["make", "--no-print-directory", "-C", ROOT, "demo", *args]) as term:
        term.expect(r"sample at step", timeout=120)
        term.send(CTRL_C)
        term.wait(timeout=30)  # make's own status: it was interrupted
        deadline = time.monotonic() + 10
        while _running(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(out), "charrnn still running after make was interrupted"
    assert os.path.exists(os.path.join(out, "last.pt"))


def _venv() -> str:
    """The environment running this test (make demo's charrnn is its bin/charrnn)."""
    return os.path.dirname(os.path.dirname(sys.executable))


def _running(out: str) -> bool:
    """Whether a process with `out` on its command line is alive."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if out.encode() in cmd and state != "Z":
            return True
    return False


def test_a_run_that_names_no_size_says_its_choice_in_a_terminal_and_resumes_it(tmp_path, corpus):
    """`charrnn train corpus --time-limit` as a newcomer types it: no size given. The start
    line says what charrnn chose and why; Ctrl-C saves; --resume trains the same model."""
    out = str(tmp_path / "run")
    argv = [*CHARRNN, "train", corpus, "--time-limit", "10m", "--eval-every", "10"]
    argv += ["--sample-length", "20", "--out", out]
    with Terminal(argv, cwd=str(tmp_path)) as term:
        said = term.expect(r"model: (\d+) x (\d+) LSTM, dropout [\d.]+ \(chosen for 54K characters")
        term.expect(r"sample at step 10", timeout=120)
        term.send(CTRL_C)
        code = term.wait(timeout=60)
    assert code == 130, term.tail()
    layers, width = int(said[1]), int(said[2])
    saved = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    assert (saved["model_config"]["num_layers"], saved["model_config"]["hidden_size"]) == (
        layers,
        width,
    )
    step = saved["step"]
    with Terminal([*CHARRNN, "train", corpus, "--out", out, "--resume", "--max-steps",
                   str(step + 3)], cwd=str(tmp_path)) as term:  # fmt: skip
        code = term.wait(timeout=120)
    assert code == 0 and "model: " not in term.text, term.tail()
    assert f"resuming at step {step}" in term.text
    again = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    assert again["model_config"] == saved["model_config"] and again["step"] == step + 3
