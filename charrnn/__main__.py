"""`python -m charrnn`: the command line, and how torchrun's launcher starts each worker."""

import contextlib
import os

from .launch import watch_launcher


def _say(text: str) -> None:
    with contextlib.suppress(OSError):  # stderr closed or full: the exit still happens
        os.write(2, (text + "\n").encode())


# First, before the seconds of importing torch: a worker of `--nproc-per-node` ends with
# its launcher (see charrnn.launch); anything else returns at once.
watch_launcher(_say)

from .cli import main  # noqa: E402

main()
