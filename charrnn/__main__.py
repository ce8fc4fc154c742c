"""`python -m charrnn` and the `charrnn` command: the command line, and how torchrun's
launcher starts each worker."""

import contextlib
import os
import sys

from .launch import watch_launcher
from .threads import set_wait_policy


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # stderr closed or full: the exit still happens
        os.write(2, (text + "\n").encode())


def run() -> None:
    # First, before the seconds of importing torch: a worker of `--nproc-per-node` ends with
    # its launcher (see charrnn.launch); anything else returns at once.
    watch_launcher(_say)
    # OpenMP reads its waiting policy once, as torch loads (charrnn/threads.py).
    set_wait_policy(training=sys.argv[1:2] == ["train"])
    from .cli import main

    main()


if __name__ == "__main__":
    run()
