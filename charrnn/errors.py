"""The errors charrnn raises on purpose.

Each carries a one-line message meant for the person at the terminal: what is wrong and,
where there is one, the fix. The CLI prints it as ``error: <message>`` and exits with
``exit_code``; nothing else should reach the user as a traceback.
"""


class CharRNNError(Exception):
    exit_code = 1


class UsageError(CharRNNError):
    """A bad option value (exit 2, like a command-line parse error)."""

    exit_code = 2


class CorpusError(CharRNNError):
    """The training or evaluation text cannot be used."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, damaged, foreign or from a newer charrnn."""


class OutputError(CharRNNError):
    """The output folder cannot be used (not writable, busy, or holds a run)."""


class TrainingError(CharRNNError):
    """Training cannot go on (e.g. the loss became NaN)."""


class MissingExtraError(CharRNNError):
    """A command needs an optional dependency that is not installed."""
