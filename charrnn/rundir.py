"""The output folder of a training run: checked before training, locked while it runs.

Everything that could make a save fail an hour into a run (a file in the way, no write
permission, another run writing there, an earlier run that would be overwritten) is found
here, before the first step.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from .errors import OutputError

LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
LOCK = ".lock"


class RunDir:
    def __init__(self, path: str):
        self.path = path
        self._lock_file = None
        self._metrics_fresh = False

    @property
    def last(self) -> str:
        return os.path.join(self.path, LAST)

    @property
    def best(self) -> str:
        return os.path.join(self.path, BEST)

    @property
    def metrics(self) -> str:
        return os.path.join(self.path, METRICS)

    def has_checkpoints(self) -> bool:
        return os.path.exists(self.last) or os.path.exists(self.best)

    def prepare(self, resume: bool, force: bool) -> None:
        """Create the folder if needed, check it is writable, and refuse to overwrite a run."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise OutputError(f"--out {self.path!r} is a file, not a folder: choose another --out")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"cannot create --out {self.path!r} ({e.strerror or e}): choose a writable folder"
            ) from None
        probe = os.path.join(self.path, f".write-test-{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            os.unlink(probe)
        except OSError as e:
            raise OutputError(
                f"cannot write to --out {self.path!r} ({e.strerror or e}): choose a writable folder"
            ) from None
        if resume:
            if not os.path.exists(self.last):
                raise OutputError(
                    f"nothing to resume: {self.last} does not exist; drop --resume to start a run"
                )
        elif self.has_checkpoints() and not force:
            raise OutputError(
                f"--out {self.path!r} already holds a run; add --resume to continue it "
                "or --force to start over (its checkpoints are replaced at the first save)"
            )
        self._metrics_fresh = not resume

    def lock(self) -> None:
        """Hold an exclusive lock on the folder for this process's lifetime, so two runs
        never write over each other's checkpoints."""
        path = os.path.join(self.path, LOCK)
        f = open(path, "a+")  # noqa: SIM115 - held open until release()
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; run without one
            self._lock_file = f
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise OutputError(
                f"another charrnn train ({holder}) is writing to --out {self.path!r}: "
                "wait for it to finish or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line per evaluation. A new run (not a resume) starts the file afresh at
        its first write, so --force never mixes two runs' lines."""
        mode = "w" if self._metrics_fresh else "a"
        self._metrics_fresh = False
        with open(self.metrics, mode) as f:
            f.write(json.dumps(record) + "\n")
