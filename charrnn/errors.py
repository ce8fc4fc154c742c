"""The errors charrnn raises on purpose.

Each carries a one-line message meant for the person at the terminal: what is wrong and,
where there is one, the fix. The CLI prints it as ``error: <message>`` and exits with
``exit_code``; nothing else should reach the user as a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .training import TrainResult


class CharRNNError(Exception):
    exit_code = 1


class UsageError(CharRNNError, ValueError):
    """A bad option value (exit 2, like a command-line parse error). Also a ValueError, so
    that a Python caller's `except ValueError` around a bad argument catches it.

    `field` names the config field the value belongs to, so a value read from a checkpoint
    can be reported as damage to that checkpoint rather than as an option the user typed.
    """

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class CorpusError(CharRNNError):
    """The training or evaluation text cannot be used."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, damaged, foreign or from a newer charrnn."""


class OutputError(CharRNNError):
    """The output folder cannot be used (not writable, busy, or holds a run)."""


class TrainingError(CharRNNError):
    """Training cannot go on (e.g. the loss became NaN)."""


class CacheError(CharRNNError):
    """The id cache folder cannot be used (not writable, full)."""


class ResourceError(CharRNNError):
    """The run would need more memory than the machine has: refused before allocating."""


class MissingExtraError(CharRNNError):
    """A command needs an optional dependency that is not installed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped `charrnn.train`, which first finished the step and saved
    last.pt. A KeyboardInterrupt, so a script stops as Ctrl-C stops any Python program;
    a caller that catches it finds the run's TrainResult in `result` (`result.last_path`).
    """

    def __init__(self, message: str, result: TrainResult):
        super().__init__(message)
        self.result = result
