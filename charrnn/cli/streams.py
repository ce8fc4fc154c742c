"""stdout and stderr for the commands, and the one exit path for errors.

stdout carries nothing but a command's data; progress, warnings and errors go to stderr
through `err`. Every CharRNNError leaves through `fail`: one `error: ...` line and its
exit code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.markup import escape

from ..distributed import LAUNCHER_ENV, DistributedError, FollowerExit, is_reporter
from ..errors import CharRNNError, OutputError


class BestEffortStderr:
    """sys.stderr (whichever it is at the moment, as tests swap it) for rich, except that a
    write that fails (a full disk, a closed stream) turns our stderr output off instead of
    raising: a run never dies because its progress cannot be written."""

    def __init__(self) -> None:
        self.failure: str | None = None

    def _call(self, method: str, *args: Any) -> Any:
        stream = _underlying(sys.stderr)
        if self.failure is not None or stream is None:
            return None
        try:
            return getattr(stream, method)(*args)
        except (OSError, ValueError) as e:
            self.failure = getattr(e, "strerror", None) or str(e)
            detach_stream(stream)
            return None

    def write(self, text: str) -> int:
        self._call("write", text)
        return len(text)

    def flush(self) -> None:
        self._call("flush")

    def isatty(self) -> bool:
        return bool(self._call("isatty"))

    def fileno(self) -> int:
        return _underlying(sys.stderr).fileno()

    @property
    def encoding(self) -> str:
        return getattr(_underlying(sys.stderr), "encoding", None) or "utf-8"


def _underlying(stream: Any) -> Any:
    """The stream beneath rich's redirection. While a `Live` display runs, sys.stderr may be
    its FileProxy, which prints through our console: writing there would feed the console
    its own output, forever (a hang that grows without bound)."""
    while isinstance(stream, FileProxy):
        stream = stream.rich_proxied_file
    return stream


def detach_stream(stream: Any) -> None:
    """Point a failed standard stream's descriptor at /dev/null, so the interpreter's final
    flush of what it still buffers cannot fail again (which would change the exit status)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


stderr_stream = BestEffortStderr()
# soft_wrap: a log line stays one line in a file or pipe (rich would cut it at 80 columns).
# markup off: paths and corpus text may hold [brackets]; only our own labels are styled.
err = Console(file=stderr_stream, highlight=False, soft_wrap=True, markup=False)


class Stdout:
    """The command's data channel. A reader that went away (`| head`) ends the command
    quietly with status 0; any other failure to write (a full disk, a closed stdout) is
    an error line, never a traceback or a silent success."""

    def __init__(self) -> None:
        if sys.stdout is None:  # started with `>&-`
            raise OutputError(
                "stdout is closed, so the output would be lost: redirect it to a file or a "
                "pipe (e.g. > out.txt)"
            )
        self.stream = sys.stdout

    def write(self, text: str) -> None:
        self._do(self.stream.write, text)

    def flush(self) -> None:
        self._do(self.stream.flush)

    def print(self, text: str) -> None:
        self.write(text + "\n")
        self.flush()

    def _do(self, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            detach_stream(self.stream)
            reason = getattr(e, "strerror", None) or str(e)
            raise OutputError(
                f"cannot write the output to stdout ({reason}): free some space or redirect "
                "it elsewhere"
            ) from None


def fail(error: CharRNNError) -> NoReturn:
    # Under torchrun every process meets the same bad input: rank 0 alone says so.
    # Under charrnn's own launcher, the launcher names a process that died.
    unnamed = isinstance(error, DistributedError) and not error.named
    echo = not (unnamed and os.environ.get(LAUNCHER_ENV))
    if is_reporter() and echo and not isinstance(error, FollowerExit):
        err.print(f"[bold red]error:[/] {escape(str(error))}", markup=True)
    raise typer.Exit(code=error.exit_code)


def guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except CharRNNError as e:
        fail(e)


def printing(fn: Callable[[], Any]) -> None:
    """Run a command whose data goes to stdout: a closed pipe or Ctrl-C ends it quietly."""
    try:
        guarded(fn)
    except BrokenPipeError:
        quiet_exit(0)
    except KeyboardInterrupt:
        quiet_exit(130)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True)


def quiet_exit(code: int) -> NoReturn:
    # The reader went away (`| head`) or the user pressed Ctrl-C: whatever was written is
    # intact. Point stdout at /dev/null so the interpreter's final flush cannot complain.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    raise typer.Exit(code=code)


_rich_on_broken_pipe = Console.on_broken_pipe


def _closed_pipe_is_success(console: Console) -> None:
    """rich's hook for a BrokenPipeError on a console's file, for every console of the
    process: ours and the one typer prints --help with. rich's own ends the process with
    status 1; the reader of stdout going away (`| head -c 1`) is no failure, so this ends
    it as `printing` does, with 0 (which matters under `set -o pipefail`)."""
    if console.file is not sys.stdout:  # stderr: rich's own way
        _rich_on_broken_pipe(console)
    console.quiet = True
    quiet_exit(0)


Console.on_broken_pipe = _closed_pipe_is_success  # type: ignore[method-assign]


muted: list[Any] = []  # stderr, while a non-reporting process parses its command line


def unmute() -> None:
    if muted:
        sys.stderr = muted.pop()
