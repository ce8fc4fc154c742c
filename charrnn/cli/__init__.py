"""The command line: parse options, call one library function, report on stderr.

Only this package imports typer or rich; nothing in the library imports it. `app` (in
app.py) is the typer app; each command module registers its commands on it when imported
here, and `main` is the console entry point.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any

import typer
from rich.markup import escape

from ..distributed import is_reporter
from .app import app
from .streams import err, muted

# Importing a command module registers its commands on `app`, and --help lists them in
# that order: train first, as before the split.
# isort: off
from . import train
from . import generate
from . import info
from . import inspect
from . import export
from . import serve
# isort: on

__all__ = ["app", "export", "generate", "info", "inspect", "main", "serve", "train"]


def main() -> None:
    # Generated text may hold any character: write UTF-8 whatever the locale says
    # (PYTHONIOENCODING=ascii would otherwise crash on the first emoji).
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(encoding="utf-8")
    if not is_reporter():
        # Another process of a torchrun launch: rank 0 reports a bad command line, once;
        # this one speaks again (if it fails on its own) once its command has begun.
        muted.append(sys.stderr)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    # Not standalone: a command line that typer/click cannot parse (`--val-chars 1e3`, an
    # unknown option) comes back here and is said in charrnn's one-line form, not a box.
    try:
        code = app(standalone_mode=False)
    except _CLICK_ERROR as e:
        if e.format_message():  # empty: `charrnn` alone, whose help is already shown
            err.print(f"[bold red]error:[/] {escape(usage_message(e))}", markup=True)
        code = e.exit_code
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


# typer's parsing errors (click's ClickException: BadParameter, NoSuchOption, ...), found
# from the class typer exports, whether typer carries its own click or uses click's.
_CLICK_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)
_NOT_AN_INT = re.compile(r"Invalid value for '([^']+)'.*: Input should be a valid integer")
_NOT_A_NUMBER = re.compile(r"Invalid value for '([^']+)'.*: Input should be a valid number")


def usage_message(e: Any) -> str:
    """One line for a command line typer could not parse, naming the option and the fix."""
    message = e.format_message().rstrip(".")
    if match := _NOT_AN_INT.match(message):
        message = f"{match[1]} takes a whole number written in digits, e.g. 1000 (not 1e3 or 1.5)"
    elif match := _NOT_A_NUMBER.match(message):
        message = f"{match[1]} takes a number, e.g. 0.5 or 1e-3"
    ctx = getattr(e, "ctx", None)
    words = ctx.command_path.split()[1:] if ctx is not None else []
    return f"{message}; see `{' '.join(['charrnn', *words, '-h'])}`"
