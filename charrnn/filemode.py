"""The mode of the files charrnn writes through a temporary file and a rename.

`tempfile.mkstemp` creates its file 0600 (it is meant for secrets), and the rename keeps
that mode: a checkpoint or an id-cache entry would then be unreadable to anyone else,
whatever the umask says. Such files get the mode an ordinary `open` gives instead.
"""

from __future__ import annotations

import os


def _read_umask() -> int:
    # The umask can only be read by setting it: done once, at import, before any thread
    # that could create a file in between starts.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def shared_mode(fd: int) -> None:
    """Give the open file `fd` the mode 0666 less the umask (what `open` would give)."""
    os.fchmod(fd, 0o666 & ~UMASK)
