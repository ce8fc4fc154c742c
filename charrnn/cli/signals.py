"""How `charrnn train` stops on SIGINT and SIGTERM: save first, and never hang."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..distributed import World
from ..rundir import RunDir

if TYPE_CHECKING:
    from ..training import StopRequest

signal_seen: list[str] = []  # the signal that stopped a run at once (this invocation's)

# Seconds a run may take, after the first SIGINT/SIGTERM, to finish its step and save before
# the process ends itself anyway: a stuck step, save or display can never keep a run alive.
STOP_GRACE_SECONDS = 20.0


def install_stop_handlers(stop: StopRequest, out: str) -> Callable[[], None]:
    """First SIGINT/SIGTERM: finish the step, save, exit. A second Ctrl-C: stop at once.

    A watchdog thread backs the first: if the run has not ended within STOP_GRACE_SECONDS,
    it says so and ends the process (checkpoints are written to a temporary file and
    renamed, so the newest complete save is intact). Under torchrun the launcher keeps
    that watch over all the processes instead."""
    signal_seen.clear()
    previous = {}
    ended = threading.Event()
    first: list[float] = []  # when this process was first signalled (not told by a peer)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        # A second Ctrl-C is a person asking twice; a SIGTERM may come twice from machinery
        # (a parent-death signal, a launcher passing one on), and one Ctrl-C may arrive twice
        # within moments (from the terminal and from a launcher): neither is asked twice.
        again = bool(first) and name == "SIGINT" and time.monotonic() - first[0] > 0.5
        if not stop.armed or again:  # nothing to save yet, or asked twice: stop at once
            signal_seen[:] = [name]
            raise KeyboardInterrupt
        if first:  # asked already: the run is stopping
            return
        first.append(time.monotonic())
        if not stop:  # under torchrun another process may have seen it first
            stop.set(name)
        if not World.from_env().launched:
            threading.Thread(target=_watchdog, args=(name, out, ended), daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        ended.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _watchdog(name: str, out: str, ended: threading.Event) -> None:
    if ended.wait(1.0):
        return
    # Runs beside the main thread, which may hold the console: a plain write to fd 2.
    _raw_stderr(f"{name}: stopping after this step and saving (press Ctrl-C again to stop now)")
    if ended.wait(STOP_GRACE_SECONDS - 1.0):
        return
    last = RunDir(out).last
    saved = f"{last} holds the newest save" if os.path.exists(last) else "nothing was saved"
    _raw_stderr(
        f"error: the run did not stop within {STOP_GRACE_SECONDS:g}s of {name}; ended it; {saved}"
    )
    os._exit(130 if name == "SIGINT" else 143)


def _raw_stderr(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, ("\n" + line + "\n").encode("utf-8", "replace"))
