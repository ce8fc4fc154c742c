"""The checkpoint: one plain dict, saved atomically, loaded without running any code.

Keys (FORMAT_VERSION 1)::

    format           "charrnn-checkpoint"
    version          1
    charrnn_version  the charrnn that wrote it
    model_config     ModelConfig as a dict (model, vocab_size, hidden_size, num_layers, dropout,
                     input, embedding_size); input "onehot" or "embedding" (W_xh = W_ih E);
                     no input key (checkpoints from before it) means "onehot"
    train_config     TrainConfig as a dict
    vocab            list of the characters, id order
    model_state      state_dict on CPU: rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, ...
                     (torch's own nn.LSTM / nn.RNN / nn.GRU names and gate order), head.weight,
                     head.bias; with input "embedding" also embed.weight, E^T (V, D)
    optimizer_state  Adam's state_dict
    step             optimizer steps taken so far
    epoch            epochs completed
    cursor           {"epoch": int, "window": int}: the next window to train on
    hidden           the carried hidden state, list of CPU tensors (h or h, c), or None
    rng              {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    plan_steps       the step count the learning-rate schedule decays over
    best_val_loss    the lowest validation loss so far (nats/char), or None
    history          list of metric dicts, one per evaluation
    corpus           {"name": str, "num_chars": int, "first_char": str}

Only tensors and Python primitives appear, so ``torch.load(path, weights_only=True)``
reads it on any machine, and a hostile pickle is refused instead of run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import warnings
from typing import Any

import torch

from . import __version__
from .config import ModelConfig
from .errors import CheckpointError
from .model import CharRNN
from .vocab import Vocab

FORMAT_NAME = "charrnn-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(ckpt: dict[str, Any], path: str) -> None:
    """Write `ckpt` to `path` atomically: a crash or a full disk part-way leaves the previous
    file at `path` whole, because the new bytes go to a temporary file in the same folder
    and only a finished, flushed file is renamed over it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    # The rename itself is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load and check a checkpoint, on CPU, refusing anything but plain data."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} not found: train one with `charrnn train`")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory: pass the .pt file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): it was not written fully")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols; we judge
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {path!r} cannot be read: it is truncated or not a checkpoint"
            ) from None
        raise CheckpointError(
            f"checkpoint {path!r} was refused: it holds objects other than plain data, "
            "which could run code when loaded; only load checkpoints from people you trust"
        ) from None
    except Exception as e:  # torch.load fails in many ways on bytes that are not its own
        raise CheckpointError(
            f"checkpoint {path!r} cannot be read: it is truncated or not a checkpoint "
            f"({type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path!r} is not a charrnn checkpoint")
    version = ckpt.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path!r} has no valid format version: it is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {version}, newer than this charrnn "
            f"({__version__}) reads (<= {FORMAT_VERSION}): upgrade charrnn"
        )
    missing = [k for k in ("model_config", "vocab", "model_state") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks {', '.join(missing)}: it is damaged")
    return ckpt


RESUME_KEYS = ("train_config", "optimizer_state", "step", "cursor", "rng")


def check_resumable(ckpt: dict[str, Any], path: str) -> None:
    """A checkpoint to resume from needs the training state, not just the weights."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path!r}: it lacks {', '.join(missing)}; start a new run "
            "with --force"
        )
    model_from_checkpoint(ckpt, path)  # the weights must fit the model they claim to be


def model_from_checkpoint(ckpt: dict[str, Any], path: str = "") -> tuple[CharRNN, Vocab]:
    """Rebuild the model (in eval mode, on CPU) and its vocabulary."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
        vocab = Vocab.from_list(ckpt["vocab"])
        model = CharRNN(config)
        model.load_state_dict(ckpt["model_state"])
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        detail = next((x for x in lines if "mismatch" in x or "key" in x.lower()), lines[0])
        raise CheckpointError(
            f"checkpoint {path!r} does not describe a usable model ({detail[:160]})"
        ) from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path!r} has {len(vocab)} characters in its vocabulary but its model "
            f"expects {config.vocab_size}: it is damaged"
        )
    model.eval()
    return model, vocab
