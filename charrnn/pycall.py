"""What a call from Python needs that the command line does not: Python's habits in the
arguments (pathlib.Path, numpy's str and bool), errors reworded in the caller's terms
(max_steps= for --max-steps), Ctrl-C and SIGTERM met as `charrnn train` meets them, and one
run at a time in a process. api.py's python_train and load are built on these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .config import INPUTS, MODELS, PRECISIONS, ModelConfig, SampleConfig, TrainConfig
from .errors import CharRNNError, TrainingInterrupted, UsageError

if TYPE_CHECKING:
    from .training import StopRequest, TrainResult


def as_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name}= must be a str (got {shown(value)})", name)
    return str(value)  # numpy's str_ as a plain str


def as_path(name: str, value: Any) -> str:
    """A path argument as a str: os.PathLike (pathlib.Path) is welcome; bytes and numbers
    are not (open() takes an int for a file descriptor, and bytes iterate as ints)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(
            f"{name}= must be a path, a str or os.PathLike such as pathlib.Path "
            f"(got {shown(value)})",
            name,
        )
    return str(value)


def shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} of type {type(value).__name__}"


# The arguments of charrnn.train, load and Model.sample that the CLI spells as flags.
_ARGUMENTS = {
    *(f.name for f in dataclasses.fields(ModelConfig)),
    *(f.name for f in dataclasses.fields(TrainConfig)),
    *(f.name for f in dataclasses.fields(SampleConfig)),
    *("corpus", "out", "resume", "force", "init_from", "encoding", "cache_dir", "seed"),
    "on_event",
}
_SWITCHES = ("resume", "force")  # the flags that are booleans: resume=True
_RENAMED = {"quiet": "on_event"}  # no events, no progress
# A flag, and the value that follows it: written by repr or a number ("--out 'run'",
# "--batch-size 5"), whose space goes; or one of the choices ("--device cpu"), quoted.
_CHOICES = "|".join(sorted({*MODELS, *INPUTS, *PRECISIONS, "cpu", "cuda", "mps"}, key=len)[::-1])
_FLAG = re.compile(
    r"(?<![\w/-])--(?P<flag>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
    rf"(?: (?:(?=['\"]|-?\d)|(?P<choice>cuda:\d+|{_CHOICES})\b))?"
)


def in_python_terms(message: str) -> str:
    """A message for the command line, reworded for a Python caller: --max-steps 5 becomes
    max_steps=5 and --resume resume=True. Flags with no argument of that name stay."""

    def argument(match: re.Match[str]) -> str:
        name = match["flag"].replace("-", "_")
        name = _RENAMED.get(name, name)
        if name not in _ARGUMENTS:
            return match.group(0)
        if name in _SWITCHES:
            return f"{name}=True"
        return f"{name}={match['choice']!r}" if match["choice"] else f"{name}="

    return _FLAG.sub(argument, message)


@contextlib.contextmanager
def python_terms() -> Iterator[None]:
    """charrnn's errors, as they leave a call from Python, in the caller's terms. The
    checks behind them are the CLI's too, which words them with its flags."""
    try:
        yield
    except CharRNNError as e:
        if len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (in_python_terms(e.args[0]),)
        raise


def corpus_paths(corpus: Any) -> list[str]:
    """corpus= as the list of str paths `charrnn train` gives: one path, or several."""
    if isinstance(corpus, str | os.PathLike):
        return [as_path("corpus", corpus)]
    if isinstance(corpus, bytes | bytearray) or not isinstance(corpus, Iterable):
        # Iterated, bytes are ints, and open() takes an int as a file descriptor.
        fix = ": decode bytes to str first" if isinstance(corpus, bytes | bytearray) else ""
        raise UsageError(
            "corpus= must be a path (a str or os.PathLike such as pathlib.Path) or a list of "
            f"them (got {shown(corpus)}){fix}",
            "corpus",
        )
    paths = [as_path("corpus", path) for path in corpus]
    if not paths:
        raise UsageError("corpus= is empty: give one or more files or folders", "corpus")
    return paths


def as_switch(name: str, value: Any) -> bool:
    if type(value).__name__ not in ("bool", "bool_"):  # resume="False" is true
        raise UsageError(f"{name}= must be True or False (got {shown(value)})", name)
    return bool(value)


# What Python does by default on these signals; charrnn.train replaces only those.
_DEFAULT_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """During the call, the first Ctrl-C or SIGTERM asks the loop to finish its step and
    save last.pt (the CLI's behaviour). Python runs handlers in the main thread only, and
    a script's own handler is the script's: neither is touched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if not stop.armed or stop:  # nothing to save yet, or asked twice: stop at once
            if signum == signal.SIGTERM:
                _die_by_sigterm()
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, default in _DEFAULT_HANDLERS.items()
        if signal.getsignal(sig) == default
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _die_by_sigterm() -> None:
    """End the process as SIGTERM's default does, so a batch scheduler sees it killed by
    SIGTERM (status 143) and not an exception."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)


def interrupted(result: TrainResult, out: str) -> TrainingInterrupted:
    """After a signal's clean stop: SIGTERM ends the process as it would have (if its
    handler is still the default); for Ctrl-C, the exception to raise."""
    if result.stop_reason == "SIGTERM" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _die_by_sigterm()
    name = "Ctrl-C (SIGINT)" if result.stop_reason == "SIGINT" else result.stop_reason
    return TrainingInterrupted(
        f"charrnn.train was stopped by {name} at step {result.step} and saved "
        f"{result.last_path}; continue with charrnn.train(..., out={out!r}, resume=True)",
        result,
    )


# One charrnn.train at a time in a process: torch's random generator and thread settings
# are global, so two runs at once would draw each other's random numbers, and neither
# would be the run its seed promises.
_ONE_RUN = threading.Lock()
_running_in: list[str] = []  # the name of the thread that holds _ONE_RUN


@contextlib.contextmanager
def one_run() -> Iterator[None]:
    if not _ONE_RUN.acquire(blocking=False):
        holder = "".join(_running_in) or "another"
        raise UsageError(
            f"another charrnn.train is running in this process (thread {holder}): run them "
            "one after another, or in separate processes"
        )
    _running_in[:] = [threading.current_thread().name]
    try:
        yield
    finally:
        _running_in.clear()
        _ONE_RUN.release()
