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
        self._fresh = False  # a new run whose first write must clear the previous run's files
        self._pending: list[dict[str, Any]] = []  # training-loss lines held until that write

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
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise OutputError(
                f"--out {self.path!r} is a symbolic link to {os.readlink(self.path)!r}, which does "
                "not exist: create that folder, or choose another --out"
            )
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
        self._check_files()
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
        self._fresh = not resume

    def _check_files(self) -> None:
        """Each file a run will write must be writable now, not at the first evaluation an
        hour in: a directory or an immutable file in the way is found here."""
        for path in (self.last, self.best, self.metrics):
            if not os.path.exists(path) or os.path.islink(path):
                continue  # a save replaces a link itself, wherever it points
            if os.path.isdir(path):
                raise OutputError(
                    f"{path} is a directory, but the run writes a file there: move it away "
                    "or choose another --out"
                )
            try:
                # Appending nothing changes nothing, but fails as a write would (read-only,
                # immutable).
                with open(path, "ab"):
                    pass
            except OSError as e:
                raise OutputError(
                    f"cannot write {path} ({e.strerror or e}): fix its permissions or choose "
                    "another --out"
                ) from None

    def lock(self) -> None:
        """Hold an exclusive lock on the folder for this process's lifetime, so two runs
        never write over each other's checkpoints. The lock file goes again on release:
        a finished or failed run leaves no `.lock` behind."""
        path = os.path.join(self.path, LOCK)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; run without one
            return
        while True:
            f = open(path, "a+")  # noqa: SIM115 - held open until release()
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
            # The holder we waited on may have removed the file between our open and our
            # lock: then we hold a lock on a file nobody else will see. Try again.
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock_file = f

    def release(self) -> None:
        if self._lock_file is not None:
            # Unlink while still holding the lock, so no one can lock this file meanwhile.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.path, LOCK))
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None

    def clear_previous_run(self) -> None:
        """Called by a new run (not a resume) just before its first file lands: the files of
        the run it replaces (--force) go, all of them, so the folder never holds two runs'
        files: a best.pt or metrics.jsonl left from the old run would be taken for the new
        one's. Until then the old run is intact, so a run that fails early loses nothing."""
        if not self._fresh:
            return
        for path in (self.best, self.metrics, self.last):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._fresh = False

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line per evaluation."""
        self.clear_previous_run()
        self._append([record])

    def append_train_loss(self, record: dict[str, Any]) -> None:
        """A line with the training loss between evaluations ({"step", "train_loss"}, no
        val_loss). Until the run's first save it is held here: a --force run touches none
        of the old run's files before then."""
        self._pending.append(record)
        if not self._fresh:
            self._append(())

    def write_pending(self) -> None:
        """The training-loss lines held until the first save: called once it is complete."""
        if not self._fresh:
            self._append(())

    def _append(self, records) -> None:
        lines = [*self._pending, *records]
        if lines:
            with open(self.metrics, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in lines))
        self._pending.clear()

    def last_train_loss_step(self) -> int:
        """The step of the last training-loss line in metrics.jsonl (-1 if none): a resumed
        run redoes the steps after its last.pt and must not log them twice."""
        last = -1
        if self._fresh:  # the file is the replaced run's, not this one's
            return last
        with contextlib.suppress(OSError), open(self.metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    if "val_loss" not in record and "train_loss" in record:
                        last = max(last, int(record["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return last
