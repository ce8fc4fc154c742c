"""Processes left behind by `charrnn train --nproc-per-node` (issue 18, part 6), for real.

The claims: workers end with their launcher, even one killed by SIGKILL, and free --out's
lock even when one of them cannot take part in the stop; a worker that does not answer a
stop signal is named (rank and pid), killed after the grace, and the message says what
was saved. After either, `--resume` continues in the same --out. Linux only: the launcher
finds its processes in /proc, and the kernel's parent-death signal is Linux's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import shakespeare_head
from test_distributed import ENV, MODEL, RUN, _python, charrnn

from charrnn.checkpoint import load_checkpoint
from charrnn.launch import (
    DEFAULT_GRACE_S,
    GRACE_ENV,
    LAUNCHER_PID_ENV,
    Outcome,
    Straggler,
    grace_seconds,
    unanswered_message,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc, prctl"),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed"),
]

GRACE = 4  # seconds; the default (10) would only make the tests slower


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(shakespeare_head(30000), encoding="utf-8")
    return str(path)


def _launch(corpus: str, out: str, grace: int = GRACE) -> subprocess.Popen:
    """A 2-process run that would go on for minutes."""
    args = ["train", corpus, "--out", out, *MODEL, *RUN, "--max-steps", "100000"]
    env = {**ENV, GRACE_ENV: str(grace)}
    return _python("-m", "charrnn", *args, "--nproc-per-node", "2", env=env)


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z ...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z")  # a zombie has ended; its reaper may be slow


def _workers(out: str) -> dict[int, int]:
    """rank -> pid of the running processes of the run writing to `out`."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{name}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        ours = b"--out" in argv and argv[argv.index(b"--out") + 1] == out.encode()
        if ours and b"RANK" in env and not _gone(int(name)):
            found[int(env[b"RANK"])] = int(name)
    return found


def _training(out: str, proc: subprocess.Popen, timeout: float = 60) -> dict[int, int]:
    """Once the run's first save is on disk: its workers."""
    last, end = os.path.join(out, "last.pt"), time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if os.path.exists(last) and len(workers := _workers(out)) == 2:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"the run never saved: {proc.poll()=}")


def _wait_gone(pids, timeout: float) -> float:
    """Seconds until every pid has ended; fails after `timeout`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if all(_gone(p) for p in pids):
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError({p: _state(p) for p in pids})


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    end = time.monotonic() + 5
    while _state(pid) != "T" and time.monotonic() < end:
        time.sleep(0.01)
    assert _state(pid) == "T"


def _resumes(corpus: str, out: str) -> int:
    """`--resume` on `out` trains on (so the lock is free); the step it ends at."""
    step = load_checkpoint(os.path.join(out, "last.pt"))["step"]
    again = charrnn("train", corpus, "--out", out, "--resume", "--max-steps", str(step + 5))
    assert again.returncode == 0, again.stderr
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == step + 5
    return step


def test_a_killed_launcher_takes_its_workers_with_it(corpus, tmp_path):
    """SIGKILL to the launcher: each worker gets SIGTERM from the kernel, which is
    charrnn's ordinary stop: one step more, rank 0 saves, the lock goes, exit."""
    out = str(tmp_path / "run")
    proc = _launch(corpus, out)
    workers = _training(out, proc)
    proc.kill()
    took = _wait_gone(workers.values(), timeout=GRACE + 5)
    print(f"workers ended {took:.2f} s after the launcher's SIGKILL")
    _, err = proc.communicate(timeout=10)  # the pipe closes once the workers are gone
    assert err.count("stopped by SIGTERM at step") == 1, err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(out, ".lock"))
    stopped_at = _resumes(corpus, out)
    assert f"stopped by SIGTERM at step {stopped_at}; saved" in err  # the stop's own save


def test_a_killed_launcher_and_a_stopped_worker_still_free_the_lock(corpus, tmp_path):
    """The stop cannot finish when one worker is stopped: the other waits for it, then
    ends after the grace anyway, and the lock is free. The stopped one ends as soon as it
    is continued (a stopped process runs nothing, not even the kernel's SIGTERM)."""
    out = str(tmp_path / "run")
    proc = _launch(corpus, out)
    workers = _training(out, proc)
    _stop(workers[1])
    proc.kill()
    took = _wait_gone([workers[0]], timeout=GRACE + 5)
    print(f"rank 0 ended {took:.2f} s after the launcher's SIGKILL")
    assert took > GRACE - 1, "rank 0 should have waited the grace for rank 1"
    # The kernel frees the lock as the process's files close; on a loaded machine the
    # check may come a moment before that is visible.
    free = lambda: not os.path.exists(os.path.join(out, ".lock")) or _lock_is_free(out)  # noqa: E731
    end = time.monotonic() + 5
    while not free() and time.monotonic() < end:
        time.sleep(0.1)
    assert free()
    assert _state(workers[1]) == "T"
    os.kill(workers[1], signal.SIGCONT)
    took = _wait_gone([workers[1]], timeout=5)
    print(f"rank 1 ended {took:.2f} s after SIGCONT")
    _, err = proc.communicate(timeout=10)
    assert "could not stop together within 4 s" in err, err


def _lock_is_free(out: str) -> bool:
    import fcntl

    with open(os.path.join(out, ".lock")) as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


def test_an_unanswered_sigterm_names_the_process_and_what_was_saved(corpus, tmp_path):
    """A worker stopped (as a hung one would be), then SIGTERM to the launcher: after the
    grace, both are killed and the one line names the stopped one, says that nothing was
    saved and where the newest save is; no worker is left; --resume continues."""
    out = str(tmp_path / "run")
    proc = _launch(corpus, out)
    workers = _training(out, proc)
    _stop(workers[1])
    time.sleep(0.5)  # a save rank 0 may have begun before rank 1 stopped is now done
    last = os.path.join(out, "last.pt")
    saved = os.stat(last).st_mtime_ns
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=GRACE + 20)
    took = time.monotonic() - began
    print(f"the launcher exited {took:.2f} s after SIGTERM")
    assert proc.returncode == 143, err
    assert GRACE <= took < GRACE + 5
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: process rank 1 (pid {workers[1]}) did not answer SIGTERM within {GRACE} s "
        f"(${GRACE_ENV} sets the wait): it is stopped (SIGSTOP or a debugger); process rank 0 "
        f"(pid {workers[0]}) waited for it; they were killed (SIGKILL); nothing was saved by "
        f"this stop; {last} holds the newest save"
    ], err
    assert "continue with: charrnn train" in err and "--nproc-per-node 2" in err
    assert "Traceback" not in err
    assert all(_gone(pid) for pid in workers.values())
    assert os.stat(last).st_mtime_ns == saved
    assert not os.path.exists(os.path.join(out, ".lock")) or _lock_is_free(out)
    _resumes(corpus, out)


def test_a_second_signal_ends_the_wait_at_once(corpus, tmp_path):
    """Ctrl-C, then Ctrl-C again (charrnn's "stop at once"): the launcher passes the second
    one on and gives up waiting for a process that does not answer, a minute early."""
    out = str(tmp_path / "run")
    proc = _launch(corpus, out, grace=60)
    workers = _training(out, proc)
    _stop(workers[1])
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - began
    print(f"the launcher exited {took:.2f} s after the first SIGINT")
    assert proc.returncode == 130, err
    assert took < 10
    named = f"process rank 1 (pid {workers[1]}) did not answer SIGINT, nor a second SIGINT"
    assert named in err and err.count("error:") == 1, err
    assert all(_gone(pid) for pid in workers.values())


# ------------------------------------------------------------------- no training


def test_the_grace_is_torchruns_variable_or_ten_seconds(monkeypatch):
    monkeypatch.delenv(GRACE_ENV, raising=False)
    assert grace_seconds() == DEFAULT_GRACE_S == 10
    monkeypatch.setenv(GRACE_ENV, "3")
    assert grace_seconds() == 3
    monkeypatch.setenv(GRACE_ENV, "soon")
    with pytest.raises(Exception, match="whole number of seconds"):
        grace_seconds()


def test_the_message_names_every_process_that_did_not_answer(tmp_path):
    last = str(tmp_path / "last.pt")
    hung = (Straggler(0, 11, False), Straggler(1, 12, False))
    since = time.time() - 1  # file times lag the clock by up to a few milliseconds
    outcome = Outcome(130, signal="SIGINT", unanswered=hung, grace=10, signalled_at=since)
    assert unanswered_message(outcome, last) == (
        "processes rank 0 (pid 11) and rank 1 (pid 12) did not answer SIGINT within 10 s "
        f"(${GRACE_ENV} sets the wait); they were killed (SIGKILL); nothing was saved (the "
        "run had made no save yet)"
    )
    (tmp_path / "last.pt").write_bytes(b"")  # written after the signal
    outcome.unanswered, outcome.hurried = hung[1:], True
    assert unanswered_message(outcome, last) == (
        "process rank 1 (pid 12) did not answer SIGINT, nor a second SIGINT; it was "
        f"killed (SIGKILL); this stop saved {last} before that"
    )


# What a worker does first (`python -m charrnn` runs it before anything else), as a
# script that then reports the parent-death signal the kernel holds for it.
WORKER = """
import ctypes, os, signal, sys, time
from charrnn.launch import watch_launcher
watch_launcher(print)
got = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(got), 0, 0, 0)  # PR_GET_PDEATHSIG
print(got.value, flush=True)
"""


@pytest.mark.parametrize(
    ("env", "death_signal"),
    [
        ({}, 0),  # a user's own torchrun: RANK without charrnn's launcher
        ({LAUNCHER_PID_ENV: "PARENT"}, signal.SIGTERM),
        ({LAUNCHER_PID_ENV: "ALIVE"}, 0),  # inherited, but not the parent's: left alone
    ],
)
def test_only_charrnns_launcher_arms_the_death_signal(env, death_signal):
    other = subprocess.Popen(["sleep", "30"])
    try:
        pids = {"PARENT": str(os.getpid()), "ALIVE": str(other.pid)}
        env = {k: pids.get(v, v) for k, v in env.items()}
        child = {k: v for k, v in ENV.items() if k != LAUNCHER_PID_ENV}
        done = subprocess.run(
            [sys.executable, "-c", WORKER], env={**child, "RANK": "0", **env},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(int(death_signal))]


def test_a_launcher_gone_before_the_worker_looked_ends_the_worker():
    """The launcher died between starting the worker and the kernel's promise: no death
    signal will ever come, so the worker sends itself the SIGTERM at once."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**ENV, "RANK": "0", LAUNCHER_PID_ENV: str(dead.pid)}
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", WORKER + "time.sleep(30)"], env=env, capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == -signal.SIGTERM
    assert time.monotonic() - began < 10
