"""`charrnn train ... --nproc-per-node N`: one machine's processes, started by torchrun's own
launcher (torch.distributed.launcher, the API behind the `torchrun` command), not by a
launcher of charrnn's. It is `torchrun --standalone --nproc-per-node N -m charrnn train ...`
with charrnn's manners: the workers report (rank 0 alone), and the outcome comes back as
a `Outcome` the CLI turns into one line and charrnn's exit codes, where plain torchrun
would print its own traceback.

Two things torchrun's agent leaves undone are done here:

- Workers end with their launcher. The agent passes on a SIGTERM it receives, but a
  launcher killed by SIGKILL (the out-of-memory killer, a batch scheduler) passes on
  nothing, and its workers, each in a session of its own, would go on training, holding
  --out's lock. So each worker asks the kernel for a SIGTERM when its launcher ends
  (`watch_launcher`): charrnn's ordinary stop, in which the processes agree on a step,
  rank 0 saves last.pt and the lock goes.
- A worker that does not answer a stop is named. The agent waits 30 s for every process
  and kills the rest without a word; charrnn's launcher waits `grace_seconds()`, then kills
  and names the processes still running (`Outcome.unanswered`), on Linux (it finds them in
  /proc). Elsewhere, or with a torch that lets no one else take its signals, the agent's
  own stop runs, bounded by the same grace.

This module imports torch only inside `run_workers`: `watch_launcher` runs in every worker
before the seconds of importing torch, so that a launcher dying meanwhile is noticed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

# torchrun's agent logs every worker it starts and stops; the workers speak for the run.
_QUIET_LOGGERS = ("torch.distributed",)
# Set by the launcher for its workers: who their launcher is. A worker without it (under
# a user's own torchrun) leaves its lifetime to whoever started it.
LAUNCHER_PID_ENV = "CHARRNN_LAUNCHER_PID"
# torchrun's own variable for the same wait: after a stop signal, how long the processes
# get to finish their step and save before they are killed.
GRACE_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
# A step and a save take well under a second at the sizes charrnn trains on CPUs, and a
# few seconds for large models on GPUs. torchrun's default is 30 s, which is also the
# default grace of Slurm (KillWait) and Kubernetes before their SIGKILL: charrnn's
# shorter wait gets its message out before a scheduler's SIGKILL ends the launcher too.
DEFAULT_GRACE_S = 10
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # charrnn's stop: finish the step, save
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_POLL_S = 0.05  # how often the launcher looks whether its processes have ended
_HURRY_S = 2.0  # after a second signal: time for the processes to end at once
_WATCH_S = 0.5  # how often a worker looks whether its launcher is still there


@dataclass(frozen=True)
class Straggler:
    """A process still running when the launcher stopped waiting for it after a signal."""

    rank: int
    pid: int
    stopped: bool  # by SIGSTOP or a debugger: it cannot even run its signal handler


@dataclass
class Outcome:
    exit_code: int
    # Set when a worker died of a signal no one sent it through charrnn (SIGKILL, the
    # out-of-memory killer): the run's own processes could not report that.
    killed: tuple[int, str] | None = None  # (rank, signal name)
    signal: str | None = None  # the launcher itself was stopped by this signal
    # After `signal`: the processes that had not ended when the grace ran out (or when a
    # second signal came: `hurried`); the launcher killed them.
    unanswered: tuple[Straggler, ...] = ()
    grace: int = DEFAULT_GRACE_S
    hurried: bool = False
    signalled_at: float | None = None  # time.time() when `signal` came


def worker_args(argv: list[str]) -> list[str]:
    """The command line without --nproc-per-node (each worker is one process)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def grace_seconds() -> int:
    """Seconds the processes get to stop after a signal: $TORCH_ELASTIC_SHUTDOWN_TIMEOUT,
    else DEFAULT_GRACE_S."""
    text = os.environ.get(GRACE_ENV, "").strip()
    if not text:
        return DEFAULT_GRACE_S
    if not text.isdigit():
        raise UsageError(f"{GRACE_ENV}={text!r}: give a whole number of seconds (0 or more)")
    return int(text)


# ------------------------------------------------------------------------ the launcher


def run_workers(nproc: int, argv: list[str]) -> Outcome:
    """Run `python -m charrnn <argv>` in `nproc` processes under torchrun's launcher."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .distributed import LAUNCHER_ENV

    grace = grace_seconds()
    # Each of its modules has a logger of its own level: quiet them all.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_QUIET_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_ENV] = str(nproc)
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # As torchrun does: processes sharing the cores should not each start a thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    stopper = _Stopper(grace, SignalException) if _can_take_signals(LaunchConfig) else None
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
        monitor_interval=0.1,
        **_agent_options(LaunchConfig, grace, stopper is not None),
    )
    previous = {sig: signal.signal(sig, stopper) for sig in _STOP_SIGNALS if stopper}
    try:
        elastic_launch(config, sys.executable)("-m", "charrnn", *worker_args(argv))
    except SignalException as e:
        if stopper is None or stopper.signal is None:  # the agent's own stop
            name = signal.Signals(e.sigval).name
            return Outcome(130 if name == "SIGINT" else 143, signal=name, grace=grace)
    except ChildFailedError as e:
        if stopper is None or stopper.signal is None:
            return _failed(e)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopper.outcome() if stopper and stopper.signal else Outcome(0)


def _can_take_signals(launch_config: type) -> bool:
    # The launcher finds its processes in /proc; it can set a handler in its main thread
    # only; and torch before `signals_to_handle` sets its own handlers over charrnn's.
    fields = {f.name for f in dataclasses.fields(launch_config)}
    main = threading.current_thread() is threading.main_thread()
    return sys.platform.startswith("linux") and main and "signals_to_handle" in fields


def _agent_options(launch_config: type, grace: int, own_signals: bool) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(launch_config)}
    options: dict[str, Any] = {}
    if "shutdown_timeout" in fields:  # the agent's own waits (after a failure) too
        options["shutdown_timeout"] = grace
    if own_signals:  # SIGINT and SIGTERM are charrnn's _Stopper's; the agent keeps the rest
        options["signals_to_handle"] = "SIGHUP,SIGQUIT"
    return options


def _failed(e: Any) -> Outcome:
    # A worker that ended by a signal other than the SIGTERM with which the agent stops
    # the rest after a failure was killed from outside (SIGKILL, the OOM killer).
    killed = sorted(
        (f.timestamp, r, f.signal_name())
        for r, f in e.failures.items()
        if f.exitcode < 0 and f.signal_name() != "SIGTERM"
    )
    if killed:
        return Outcome(1, killed=killed[0][1:])
    codes = {r: f.exitcode for r, f in e.failures.items() if f.exitcode > 0}
    return Outcome(codes.get(0) or min(codes.values(), default=1))


class _Stopper:
    """The launcher's SIGINT/SIGTERM handler, in place of torchrun's agent's (which waits
    30 s, then kills whoever has not ended, and says nothing): pass the signal on, wait up
    to `grace` seconds for every process to finish its step, save and end, kill those still
    running and remember them. Then raise the agent's own exception, so that it stops as
    it would have (finding nothing left to stop)."""

    def __init__(self, grace: int, raise_as: type):
        self.grace = grace
        self.raise_as = raise_as  # torch's SignalException
        self.signal: signal.Signals | None = None
        self.signalled_at: float | None = None
        self.workers: dict[int, int] = {}
        self.deadline = 0.0  # time.monotonic()
        self.hurried = False
        self.unanswered: tuple[Straggler, ...] = ()

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            # A second signal while waiting: passed on too (a second SIGINT stops charrnn's
            # processes at once, without their save), then a moment's wait, not the grace.
            self.hurried = True
            for pid in self.workers.values():
                _signal_group(pid, signum)
            self.deadline = min(self.deadline, time.monotonic() + _HURRY_S)
            return
        self.signal = signal.Signals(signum)
        self.signalled_at = time.time()
        self.workers = _workers()
        self.deadline = time.monotonic() + self.grace
        for pid in self.workers.values():
            _signal_group(pid, signum)
        _wait_for(self.workers.values(), lambda: self.deadline)
        self.unanswered = tuple(
            Straggler(rank, pid, _stopped(pid))
            for rank, pid in sorted(self.workers.items())
            if _running(pid)
        )
        for straggler in self.unanswered:  # SIGKILL: a stopped process ignores the rest
            _signal_group(straggler.pid, signal.SIGKILL)
        # Bounded: a process in uninterruptible sleep (a hung device) outlives SIGKILL.
        end = time.monotonic() + self.grace
        _wait_for((s.pid for s in self.unanswered), lambda: end)
        raise self.raise_as(f"Process {os.getpid()} got signal: {self.signal}", self.signal)

    def outcome(self) -> Outcome:
        assert self.signal is not None  # called only after a signal
        return Outcome(
            130 if self.signal == signal.SIGINT else 143,
            signal=self.signal.name,
            unanswered=self.unanswered,
            grace=self.grace,
            hurried=self.hurried,
            signalled_at=self.signalled_at,
        )


def _workers() -> dict[int, int]:
    """rank -> pid of this launcher's workers: its children with a RANK (Linux's /proc)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if _proc_stat(int(name))[1] != os.getpid():
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            found[int(env[b"RANK"])] = int(name)
        except (OSError, KeyError, ValueError):  # ended meanwhile, or not a worker
            continue
    return found


def _proc_stat(pid: int) -> tuple[str, int]:
    """(state, parent pid) of a process. The name before them, in parentheses, may hold
    spaces and parentheses itself: split after its last ')'."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _stopped(pid: int) -> bool:
    try:
        return _proc_stat(pid)[0] in ("T", "t")  # stopped; stopped by a tracer
    except (OSError, ValueError):
        return False


def _running(pid: int) -> bool:
    """Whether a child has not yet ended. WNOWAIT: an ended child is left for torchrun's
    agent to collect, with its exit status."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # already collected
        return False


def _wait_for(pids: Iterable[int], deadline: Callable[[], float]) -> None:
    """Until every process has ended, or time.monotonic() reaches `deadline()`."""
    pids = list(pids)
    while any(_running(p) for p in pids) and time.monotonic() < deadline():
        time.sleep(_POLL_S)


def _signal_group(pid: int, sig: int) -> None:
    # Each worker leads a process group of its own (torchrun starts it in a new session),
    # which the agent signals as a whole; a process in the launcher's group gets it alone.
    # A child the agent has collected is not signalled: its pid may be another's by now.
    if not _running(pid):
        return
    with contextlib.suppress(OSError):  # it ended meanwhile
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def unanswered_message(outcome: Outcome, last: str) -> str:
    """Which processes did not end after the signal (rank and pid), and what was saved."""
    sig = outcome.signal
    stopped = [s for s in outcome.unanswered if s.stopped]
    waiting = [s for s in outcome.unanswered if not s.stopped]
    if outcome.hurried:
        when = f", nor a second {sig}"
    else:
        when = f" within {outcome.grace} s (${GRACE_ENV} sets the wait)"
    text = f"{_names(stopped or waiting)} did not answer {sig}{when}"
    if stopped:
        text += f": {'it is' if len(stopped) == 1 else 'they are'} stopped (SIGSTOP or a debugger)"
        if waiting:
            text += f"; {_names(waiting)} waited for {'it' if len(stopped) == 1 else 'them'}"
    killed = "it was" if len(outcome.unanswered) == 1 else "they were"
    return f"{text}; {killed} killed (SIGKILL); {_saved(last, outcome.signalled_at)}"


def _names(stragglers: list[Straggler]) -> str:
    names = [f"rank {s.rank} (pid {s.pid})" for s in stragglers]
    if len(names) == 1:
        return f"process {names[0]}"
    return f"processes {', '.join(names[:-1])} and {names[-1]}"


def _saved(last: str, since: float | None) -> str:
    try:
        written = os.stat(last).st_mtime
    except OSError:
        return "nothing was saved (the run had made no save yet)"
    if since is not None and written >= since:
        return f"this stop saved {last} before that"
    return f"nothing was saved by this stop; {last} holds the newest save"


# ------------------------------------------------------------------------ a worker


def watch_launcher(say: Callable[[str], None]) -> None:
    """In a worker that charrnn's launcher started (not a user's own torchrun): end with the
    launcher, however it ends. Linux sends SIGTERM when it does (prctl PR_SET_PDEATHSIG):
    charrnn's ordinary stop. Elsewhere a thread that sees the launcher gone sends it. If the
    stop cannot finish within the grace (another process does not answer), the thread ends
    this process, which frees --out's lock (rank 0 first `say`s so)."""
    env = os.environ
    if "RANK" not in env or not env.get(LAUNCHER_PID_ENV, "").isdigit():
        return
    launcher = int(env[LAUNCHER_PID_ENV])
    if os.getppid() != launcher and _exists(launcher):
        return  # not its child (the variable was inherited): its launcher is someone else
    armed = _die_with_parent(signal.SIGTERM)
    if os.getppid() != launcher:  # it ended before the kernel was asked: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
        return
    try:
        grace = grace_seconds()
    except UsageError:  # the launcher refused it already; cannot happen
        grace = DEFAULT_GRACE_S
    args = (launcher, armed, grace, say if env["RANK"] == "0" else None)
    threading.Thread(target=_outlive, args=args, name="charrnn-launcher", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's
        return True
    return True


def _die_with_parent(sig: signal.Signals) -> bool:
    """Linux: the kernel sends `sig` when the thread that started this process ends. That
    is the launcher's main thread (torchrun's agent starts its workers with Popen in the
    thread that called elastic_launch, which the CLI calls in its main thread), so it
    comes when the launcher ends, not before."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        zero = ctypes.c_ulong(0)
        return libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), zero, zero, zero) == 0
    except (OSError, AttributeError):
        return False


def _outlive(launcher: int, armed: bool, grace: int, say: Callable[[str], None] | None) -> None:
    while os.getppid() == launcher:
        time.sleep(_WATCH_S)
    if not armed:  # no death signal (not Linux): send the stop ourselves
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    # Still here: the processes could not agree on a step (one of them does not answer).
    if say is not None:
        say(
            f"error: the launcher of this run (pid {launcher}) has ended and its processes "
            f"could not stop together within {grace} s (one did not answer); process rank "
            "0 ends without saving; the newest last.pt in --out is intact: continue with "
            "--resume"
        )
    os._exit(143)  # as after SIGTERM; the kernel frees --out's lock with the process
