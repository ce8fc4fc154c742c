"""Where the id cache lives: $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn, else
~/.cache/charrnn (see idcache.py for what is kept there)."""

from __future__ import annotations

import os

from .errors import CacheError

CACHE_ENV = "CHARRNN_CACHE_DIR"


def default_cache_dir() -> str:
    """$CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn.

    As the XDG base directory spec says, an XDG_CACHE_HOME that is not an absolute path is
    ignored (a relative one would scatter caches over whatever folder charrnn runs in). An
    empty or unset HOME is looked up in the password database rather than becoming `/`."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "charrnn")
    return os.path.join(_home(), ".cache", "charrnn")


def _home() -> str:
    home = os.environ.get("HOME", "")
    if os.path.isabs(home):
        return home
    try:
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError, OSError):  # no password database (Windows): its own way
        home = os.path.expanduser("~")
    if not os.path.isabs(home) or home == "/":
        raise CacheError(
            "no home folder to keep the id cache in (HOME is empty, and the user has none): "
            f"pass --cache-dir (or set {CACHE_ENV}) to a writable folder"
        )
    return home
