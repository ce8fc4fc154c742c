"""Read a text, check it is usable, encode it and split off the validation part."""

from __future__ import annotations

import codecs
import os
import sys
from dataclasses import dataclass, field

import torch

from .errors import CorpusError, UsageError
from .vocab import Vocab, describe_chars, encode_array

STDIN = "-"


@dataclass
class Text:
    text: str
    name: str  # the path, or "<stdin>"
    warnings: list[str] = field(default_factory=list)


def _read_bytes(path: str) -> bytes:
    if path == STDIN:
        return sys.stdin.buffer.read()
    if not os.path.exists(path):
        raise CorpusError(f"corpus {path!r} not found: check the path (or pass - to read stdin)")
    if os.path.isdir(path):
        raise CorpusError(f"corpus {path!r} is a directory: pass a text file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise CorpusError(f"cannot read corpus {path!r}: permission denied") from None
    except OSError as e:
        raise CorpusError(f"cannot read corpus {path!r}: {e.strerror or e}") from None


def read_text(path: str, encoding: str = "utf-8") -> Text:
    """Read and decode a corpus, refusing what cannot be a text to learn from."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown --encoding {encoding!r}: try utf-8 or latin-1") from None
    name = "<stdin>" if path == STDIN else path
    data = _read_bytes(path)
    if not data:
        raise CorpusError(f"corpus {name} is empty: give it some text to learn from")
    nul = data.find(b"\x00")
    if nul >= 0 and "16" not in encoding and "32" not in encoding:
        raise CorpusError(
            f"corpus {name} looks like binary data (a NUL byte at offset {nul}): pass a text file"
        )
    warnings: list[str] = []
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        # `head -c` cuts a file mid-character; keep the text and drop the partial character.
        if e.reason == "unexpected end of data" and e.end == len(data):
            text = data[: e.start].decode(encoding)
            warnings.append(
                f"corpus {name} ends in the middle of a character; dropped its last "
                f"{len(data) - e.start} byte(s)"
            )
        else:
            raise CorpusError(
                f"corpus {name} is not valid {encoding} (byte offset {e.start}: {e.reason}): "
                "pass --encoding with the file's encoding, e.g. --encoding latin-1"
            ) from None
    if not text:
        raise CorpusError(f"corpus {name} is empty: give it some text to learn from")
    return Text(text=text, name=name, warnings=warnings)


@dataclass
class Corpus:
    vocab: Vocab
    train: torch.Tensor  # (N_train,) compact integer ids
    val: torch.Tensor  # (N_val,)
    name: str
    warnings: list[str] = field(default_factory=list)

    @property
    def num_chars(self) -> int:
        return len(self.train) + len(self.val)


def split_sizes(num_chars: int, val_fraction: float) -> tuple[int, int]:
    num_val = int(num_chars * val_fraction)
    return num_chars - num_val, num_val


def build_corpus(
    text: Text,
    val_fraction: float,
    min_train_chars: int,
    vocab: Vocab | None = None,
) -> Corpus:
    """Encode `text` and hold out its last `val_fraction`.

    `min_train_chars` is what one training window needs (batch_size * seq_len + 1).
    With `vocab` given (a resumed run), the text must have exactly those characters.
    """
    own_vocab, ids = encode_array(text.text)
    if len(own_vocab) < 2:
        raise CorpusError(
            f"corpus {text.name} has only one distinct character "
            f"({own_vocab.chars[0]!r}): there is nothing to predict; use a real text"
        )
    if vocab is not None and own_vocab != vocab:
        extra = [c for c in own_vocab.chars if c not in vocab]
        absent = [c for c in vocab.chars if c not in own_vocab]
        what = "; ".join(
            part
            for part in (
                f"new: {describe_chars(extra)}" if extra else "",
                f"absent: {describe_chars(absent)}" if absent else "",
            )
            if part
        )
        raise CorpusError(
            f"corpus {text.name} does not match the checkpoint's vocabulary ({what}): "
            "resume with the corpus the run was trained on, or start a new run"
        )
    vocab = own_vocab
    num_train, num_val = split_sizes(len(ids), val_fraction)
    if num_train < min_train_chars or num_val < 2:
        need = max(min_train_chars / (1 - val_fraction), 2 / val_fraction)
        raise CorpusError(
            f"corpus {text.name} is too short: {len(ids)} characters, but one training window "
            f"needs {min_train_chars} ({num_train} left after holding out {val_fraction:g}) and "
            f"validation at least 2; give at least {int(need) + 1} characters, or lower "
            "--batch-size / --seq-len"
        )
    return Corpus(
        vocab=vocab,
        train=ids[:num_train],
        val=ids[num_train:],
        name=text.name,
        warnings=list(text.warnings),
    )
