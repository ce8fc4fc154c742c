"""The command line: parse options, call one library function, report on stderr.

Only this package imports typer or rich; nothing in the library imports it. `app` (in
app.py) is the typer app; each command module registers its commands on it when imported
here, and `main` is the console entry point.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ..distributed import is_reporter
from .app import app
from .streams import muted

# Importing a command module registers its commands on `app`, and --help lists them in
# that order: train first, as before the split.
# isort: off
from . import train
from . import generate
from . import inspect
# isort: on

__all__ = ["app", "generate", "inspect", "main", "train"]


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
    app()
