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
                     head.bias; with input "embedding" also embed.weight, E^T (V, D).
                     With train_config ema > 0 these are the averaged weights, and:
    training_weights the weights Adam is moving (same names), for --resume
    weight_average   {"decay": float, "updates": int}
    optimizer_state  Adam's state_dict
    step             optimizer steps taken so far
    epoch            epochs completed
    cursor           {"epoch": int, "window": int}: the next window to train on
    hidden           the carried hidden state, list of CPU float32 tensors (h or h, c), or
                     None; bf16 in checkpoints of bf16 runs from before this was widened
    precision        "fp32" or "bf16": what the weights last trained in (absent before it
                     was saved; see trained_precision)
    rng              {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    plan_steps       the step count the learning-rate schedule decays over
    best_val_loss    the lowest validation loss so far (nats/char), or None
    history          list of metric dicts, one per evaluation
    corpus           {"name": str, "num_chars": int, "first_char": str}
    lineage          the checkpoints an --init-from run started from, oldest first:
                     [{"init_from": path, "step": int, "corpus": str, "added_chars": str}]

Only tensors and Python primitives appear, so ``torch.load(path, weights_only=True)``
reads it on any machine, and a hostile pickle is refused instead of run.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os
import pickle
import stat
import tempfile
import warnings
from typing import Any

import torch

from . import __version__
from .config import ModelConfig, TrainConfig
from .errors import CheckpointError, UsageError
from .filemode import shared_mode
from .model import CharRNN, parameter_shapes, tensor_count
from .vocab import Vocab

FORMAT_NAME = "charrnn-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(ckpt: dict[str, Any], path: str) -> None:
    """Write `ckpt` to `path` atomically: a crash or a full disk part-way leaves the previous
    file at `path` whole, because the new bytes go to a temporary file in the same folder
    and only a finished, flushed file is renamed over it."""
    commit_checkpoint(write_temporary(ckpt, path), path)


def write_temporary(ckpt: dict[str, Any], path: str) -> str:
    """The first half of a save: `ckpt`, flushed to disk, in a temporary file beside `path`
    (removed again if anything fails). Returns its name."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        shared_mode(fd)
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        discard_temporary(tmp)
        raise
    return tmp


def commit_checkpoint(tmp: str, path: str) -> None:
    """The second half: rename the finished temporary file over `path`."""
    try:
        os.replace(tmp, path)
    except BaseException:
        discard_temporary(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def discard_temporary(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


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


def _read(path: str) -> Any:
    """torch.load, on CPU, plain data only. A pipe (`-c <(cat best.pt)`) is read into
    memory first: torch's zip reader needs to seek."""
    with warnings.catch_warnings():  # torch warns about old pickle protocols; we judge
        warnings.simplefilter("ignore")
        if stat.S_ISREG(os.stat(path).st_mode):
            return torch.load(path, map_location="cpu", weights_only=True)
        with open(path, "rb") as f:
            data = f.read()
        if not data:
            raise CheckpointError(f"checkpoint {path!r} is empty: nothing came through")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load and check a checkpoint, on CPU, refusing anything but plain data."""
    if not os.path.exists(path):
        if os.path.lexists(path):
            raise CheckpointError(
                f"checkpoint {path!r} is a symbolic link that leads nowhere (its target is "
                "missing, or the links form a loop): fix the link or pass the .pt file"
            )
        raise CheckpointError(_not_found(path))
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory: pass the .pt file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): it was not written fully")
    try:
        ckpt = _read(path)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        # torch names any unreadable pickle a "weights only load" failure; only a GLOBAL it
        # blocked means the file asked to run code.
        if "unsupported global" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {path!r} cannot be read: it is truncated or not a checkpoint"
            ) from None
        raise CheckpointError(
            f"checkpoint {path!r} was refused: it holds objects other than plain data, "
            "which could run code when loaded; only load checkpoints from people you trust"
        ) from None
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {path!r}: permission denied") from None
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
    _check_contents(ckpt, path)
    return ckpt


# ------------------------------------------------------------------ checking contents
#
# A checkpoint is data from a file: every value the commands use is checked for its type
# and range here, so a damaged one is named as such (exit 1) instead of crashing later, or
# being reported as if the user had typed a bad option.


def _not_found(path: str) -> str:
    """Name the checkpoint a person most likely meant: the run's last.pt when it has no
    best.pt yet (a run stopped before its first validation), or runs one folder down
    (`make demo` writes checkpoints/demo/)."""
    folder, name = os.path.split(path)
    message = f"checkpoint {path!r} not found"
    sibling = os.path.join(folder, "last.pt")
    if name == "best.pt" and os.path.isfile(sibling):
        return f"{message}; the run there has no validated model yet: use -c {sibling}"
    found = sorted(glob.glob(os.path.join(glob.escape(folder or "."), "*", name)))
    if found:
        return f"{message}; found {', '.join(found[:3])}: pass one with -c"
    return f"{message}: train one with `charrnn train`"


def _damaged(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path!r} is damaged ({what})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_contents(ckpt: dict[str, Any], path: str) -> None:
    """The keys `info`, `sample` and `eval` read, beyond the weights."""
    vocab = ckpt["vocab"]
    if (
        not isinstance(vocab, list)
        or not all(isinstance(c, str) and len(c) == 1 for c in vocab)
        or vocab != sorted(set(vocab))  # ids follow code-point order (see Vocab)
        or len(vocab) < 2
    ):
        raise _damaged(path, "vocab is not a sorted list of at least 2 distinct characters")
    # A lone surrogate (half of a UTF-16 pair) can be neither printed nor read from a text
    # file: a model that knows one would fail later, in the middle of printing a sample.
    surrogates = [c for c in vocab if "\ud800" <= c <= "\udfff"]
    if surrogates:
        shown = ", ".join(f"U+{ord(c):04X}" for c in surrogates[:3])
        raise _damaged(
            path, f"its vocabulary holds a lone surrogate ({shown}), which no text can hold"
        )
    for key in ("step", "epoch"):
        if key in ckpt and not (_is_int(ckpt[key]) and ckpt[key] >= 0):
            raise _damaged(path, f"{key} is {ckpt[key]!r}, not a count")
    best = ckpt.get("best_val_loss")
    if best is not None and not _is_number(best):
        raise _damaged(path, f"best_val_loss is {best!r}, not a number")
    history = ckpt.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise _damaged(path, "history is not a list")
        for i, record in enumerate(history):
            if not (
                isinstance(record, dict)
                and _is_int(record.get("step"))
                and _is_number(record.get("val_loss"))
            ):
                raise _damaged(path, f"history entry {i} lacks a step or a val_loss")
    corpus = ckpt.get("corpus")
    if corpus is not None:
        if not isinstance(corpus, dict):
            raise _damaged(path, "corpus is not a dict")
        if "name" in corpus and not isinstance(corpus["name"], str):
            raise _damaged(path, "corpus.name is not a string")
        if "num_chars" in corpus and not (
            _is_int(corpus["num_chars"]) and corpus["num_chars"] >= 0
        ):
            raise _damaged(path, f"corpus.num_chars is {corpus['num_chars']!r}, not a count")
        if "first_char" in corpus and corpus["first_char"] not in vocab:
            raise _damaged(path, "corpus.first_char is not in the vocabulary")
    if "train_config" in ckpt and not isinstance(ckpt["train_config"], dict):
        raise _damaged(path, "train_config is not a dict")
    lineage = ckpt.get("lineage")
    if lineage is not None and not (
        isinstance(lineage, list)
        and all(isinstance(e, dict) and isinstance(e.get("init_from"), str) for e in lineage)
    ):
        raise _damaged(path, "lineage is not a list of {init_from, ...} entries")


_MODEL_FIELDS = {
    "model": str,
    "vocab_size": int,
    "hidden_size": int,
    "num_layers": int,
    "dropout": int | float,
}


def model_config_from(ckpt: dict[str, Any], path: str) -> ModelConfig:
    raw = ckpt["model_config"]
    if not isinstance(raw, dict):
        raise _damaged(path, "model_config is not a dict")
    for name, kind in _MODEL_FIELDS.items():
        if name not in raw:
            raise _damaged(path, f"model_config lacks {name}")
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise _damaged(path, f"model_config {name} is {value!r}")
    try:
        return ModelConfig.from_dict(raw)
    except UsageError as e:
        raise _damaged(path, f"model_config {e.field} is {raw.get(e.field)!r}") from None


def check_weights(
    ckpt: dict[str, Any], config: ModelConfig, path: str, key: str = "model_state"
) -> None:
    """The weights are exactly the tensors `config` implies, and finite. Checked before any
    model is built, so a checkpoint that claims 100,000 layers or 40,000 units is refused
    at once instead of after minutes of allocating. `key`: the weights to check."""
    state = ckpt.get(key)
    if not isinstance(state, dict):
        raise _damaged(path, f"{key} is not a dict")
    if len(ckpt["vocab"]) != config.vocab_size:
        raise CheckpointError(
            f"checkpoint {path!r} has {len(ckpt['vocab'])} characters in its vocabulary but its "
            f"model expects {config.vocab_size}: it is damaged"
        )
    expected = tensor_count(config)  # counted first: building 100,000 layers' names takes long
    if len(state) != expected:
        raise _damaged(
            path,
            f"model_config says {config.num_layers} {config.model} layer(s), which have "
            f"{expected} weight tensors, but {key} holds {len(state)}",
        )
    for name, shape in parameter_shapes(config).items():
        tensor = state.get(name)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise _damaged(path, f"{key} lacks the tensor {name}")
        if tuple(tensor.shape) != shape:
            raise _damaged(
                path,
                f"{name} is {'x'.join(map(str, tensor.shape))}, but model_config "
                f"({config.model}, {config.num_layers} x {config.hidden_size}, vocabulary "
                f"{config.vocab_size}) implies {'x'.join(map(str, shape))}",
            )
        if not torch.isfinite(tensor).all():
            raise _damaged(path, f"{name} holds NaN or infinite values")


RESUME_KEYS = ("train_config", "optimizer_state", "step", "cursor", "rng")


def check_resumable(ckpt: dict[str, Any], path: str) -> tuple[ModelConfig, TrainConfig]:
    """A checkpoint to resume from needs the training state, not just the weights, and every
    part of it must fit the model. Returns the run's configs."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path!r}: it lacks {', '.join(missing)}; start a new run "
            "with --force"
        )
    model, _ = model_from_checkpoint(ckpt, path)
    model_config = model.config
    raw = ckpt["train_config"]
    try:
        train_config = TrainConfig.from_dict(raw)
    except UsageError as e:
        raise _damaged(path, f"train_config {e.field} is {raw.get(e.field)!r}") from None
    except TypeError as e:
        raise _damaged(path, f"train_config: {e}") from None
    cursor = ckpt["cursor"]
    if not (
        isinstance(cursor, dict)
        and all(_is_int(cursor.get(k)) and cursor[k] >= 0 for k in ("epoch", "window"))
    ):
        raise _damaged(path, f"cursor is {cursor!r}, not {{epoch, window}} counts")
    hidden = ckpt.get("hidden")
    if hidden is not None:
        parts = 2 if model_config.model == "lstm" else 1
        shape = (model_config.num_layers, train_config.batch_size, model_config.hidden_size)
        if not (
            isinstance(hidden, list)
            and len(hidden) == parts
            and all(isinstance(h, torch.Tensor) and tuple(h.shape) == shape for h in hidden)
            and all(h.is_floating_point() for h in hidden)
        ):
            raise _damaged(
                path, f"the hidden state is not {parts} tensor(s) of shape {list(shape)}"
            )
        if not all(torch.isfinite(h).all() for h in hidden):
            raise _damaged(path, "the hidden state holds NaN or infinite values")
    _check_optimizer(ckpt["optimizer_state"], [tuple(p.shape) for p in model.parameters()], path)
    if train_config.ema > 0:  # model_state is the average; Adam's weights are beside it
        check_weights(ckpt, model_config, path, "training_weights")
        updates = (ckpt.get("weight_average") or {}).get("updates")
        if not (_is_int(updates) and updates >= 0):
            raise _damaged(path, "weight_average lacks its count of updates")
    rng = ckpt["rng"]
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)):
        raise _damaged(path, "rng lacks torch's generator state")
    return model_config, train_config


def trained_precision(ckpt: dict[str, Any]) -> str | None:
    """The precision the checkpoint's run last trained in, "fp32" or "bf16"; None where it
    cannot be known (an "auto" run saved before checkpoints said, at an epoch's start)."""
    for said in (ckpt.get("precision"), (ckpt.get("train_config") or {}).get("precision")):
        if said in ("fp32", "bf16"):
            return said
    # "auto" on a CPU with bf16: oneDNN's LSTM left the state it saved in bf16.
    if any(
        isinstance(h, torch.Tensor) and h.dtype == torch.bfloat16 for h in ckpt.get("hidden") or []
    ):
        return "bf16"
    return None


def _check_optimizer(state: Any, shapes: list[tuple[int, ...]], path: str) -> None:
    """Adam's state_dict: its moments must have the shapes of the parameters they belong
    to; torch would only find out at the first step."""
    if not (
        isinstance(state, dict)
        and isinstance(state.get("state"), dict)
        and isinstance(state.get("param_groups"), list)
    ):
        raise _damaged(path, "optimizer_state is not Adam's state")
    for index, moments in state["state"].items():
        if not (_is_int(index) and 0 <= index < len(shapes) and isinstance(moments, dict)):
            raise _damaged(path, f"optimizer_state has no parameter {index!r}")
        for name in ("exp_avg", "exp_avg_sq"):
            value = moments.get(name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[index]:
                raise _damaged(
                    path, f"optimizer_state {name} of parameter {index} does not fit its shape"
                )


def model_from_checkpoint(ckpt: dict[str, Any], path: str = "") -> tuple[CharRNN, Vocab]:
    """Rebuild the model (in eval mode, on CPU) and its vocabulary, after checking that the
    weights are what the config says."""
    config = model_config_from(ckpt, path)
    check_weights(ckpt, config, path)
    vocab = Vocab.from_list(ckpt["vocab"])
    model = CharRNN(config)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, vocab
