"""Starting a new run from a trained model's weights (`charrnn train NEW --init-from X`).

Unlike `--resume`, nothing of the old run's training state comes along (optimizer,
step, schedule, history): only the weights. The new text may hold characters the model
never saw. The vocabulary is then the sorted union of both, so ids still follow code-point
order; every character the model knew keeps exactly its learned weights (its column of
W_xh, its row of W_hy and b_y), moved to its new id, and each new character gets the
weights a fresh model would have given it. Characters absent from the new text stay.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import torch

from .corpus import Corpus
from .errors import CharRNNError, CorpusError
from .vocab import Vocab, describe_chars, id_dtype


def union_vocab(old: Vocab, text: Vocab) -> Vocab:
    return Vocab([*old.chars, *text.chars])


def transplant(
    state: dict[str, torch.Tensor], old: Vocab, new: Vocab, fresh: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The weights for vocabulary `new`: `state`'s (a model over `old`) wherever a character
    was known, `fresh`'s (a newly initialised model over `new`) for the new characters."""
    where = torch.tensor([new.index[c] for c in old.chars])  # old id -> new id
    weights = {}
    for name, initial in fresh.items():
        # A tensor with a slice per character (W_xh's columns for one-hot input, E's rows
        # for an embedding, W_hy's rows, b_y) is as long as the vocabulary on one axis.
        axes = [a for a in range(initial.dim()) if initial.shape[a] != state[name].shape[a]]
        if not axes:  # nothing to do with characters (or no new ones): unchanged
            weights[name] = state[name].clone()
        else:
            weights[name] = initial.clone().index_copy_(axes[0], where, state[name])
    return weights


# Ids renumbered per pass: the int64 index is 8 bytes a character, so not all at once.
REMAP_CHUNK = 1 << 24


def in_vocab(corpus: Corpus, vocab: Vocab) -> Corpus:
    """`corpus` with its ids renumbered into `vocab`, a superset of its own. The result is
    in memory (compact ids), no longer a view of the mapped cache file."""
    missing = [c for c in corpus.vocab.chars if c not in vocab]
    if missing:
        raise CorpusError(
            f"corpus {corpus.name} has characters the model's vocabulary lacks: "
            f"{describe_chars(missing)}; it is not the text this run was trained on"
        )
    if corpus.vocab == vocab:
        return corpus
    remap = torch.tensor([vocab.index[c] for c in corpus.vocab.chars], dtype=torch.long)
    dtype = id_dtype(len(vocab))

    def renumber(ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(ids), dtype=dtype)
        for i in range(0, len(ids), REMAP_CHUNK):
            out[i : i + REMAP_CHUNK] = remap[ids[i : i + REMAP_CHUNK].long()]
        return out

    return dataclasses.replace(
        corpus, vocab=vocab, train=renumber(corpus.train), val=renumber(corpus.val)
    )


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """A sha256 of a model's weights (names, dtypes, shapes and bytes): what a lineage entry
    records of its source, so that a source file later replaced (a `--force` run into the
    same folder) is told apart from the model the weights came from."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def lineage_entry(path: str, ckpt: dict[str, Any], added: list[str]) -> dict[str, Any]:
    """What `info` shows of where a model came from."""
    return {
        "init_from": path,
        "step": ckpt.get("step"),
        "corpus": (ckpt.get("corpus") or {}).get("name"),
        "added_chars": "".join(added),
        "weights_sha256": weights_digest(ckpt["model_state"]),
        "init_from_abspath": os.path.abspath(path),  # `init_from` may be relative
    }


def source_status(entry: dict[str, Any], read: Any) -> str | None:
    """Whether the file a lineage entry names still holds its source model: None when it
    does (or the entry predates digests), else a few words saying what changed. `read`
    loads a checkpoint dict from a path (and raises on anything unreadable)."""
    recorded = entry.get("weights_sha256")
    if not isinstance(recorded, str):
        return None
    path = entry.get("init_from_abspath") or entry.get("init_from")
    if not isinstance(path, str) or not os.path.exists(path):
        return "that file is gone"
    try:
        current = weights_digest(read(path)["model_state"])
    except (CharRNNError, OSError, KeyError, TypeError, AttributeError, RuntimeError):
        return "that file no longer reads as a checkpoint"
    if current != recorded:
        return "that file now holds a different model"
    return None
