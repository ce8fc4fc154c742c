"""The vocabulary: the sorted set of characters (Unicode code points) of a corpus."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .errors import CorpusError


def id_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds every id, so a 200 MB corpus stays compact."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32768:
        return torch.int16
    return torch.int32


def numpy_id_dtype(vocab_size: int) -> np.dtype:
    return torch.empty(0, dtype=id_dtype(vocab_size)).numpy().dtype


class Vocab:
    """Characters <-> ids. Ids follow code-point order, so the same text always gives the
    same vocabulary, whatever order its characters first appear in."""

    def __init__(self, chars: Iterable[str]):
        self.chars: list[str] = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a vocabulary holds single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def missing(self, text: str) -> list[str]:
        """The distinct characters of `text` that are not in the vocabulary, in order seen."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def encode(self, text: str) -> list[int]:
        missing = self.missing(text)
        if missing:
            raise CorpusError(f"characters not in the vocabulary: {describe_chars(missing)}")
        return [self.index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_list(self) -> list[str]:
        return list(self.chars)

    @classmethod
    def from_list(cls, chars: Sequence[str]) -> Vocab:
        return cls(chars)


def describe_chars(chars: Sequence[str], limit: int = 10) -> str:
    """A readable list of characters, escaping the invisible ones: 'x', '\\n', 'é'."""
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# `info` lists a vocabulary this size or smaller in full; a larger one as a count per
# script and a sample (`info --json` always has every character).
VOCAB_SHOWN = 100


def describe_vocab(chars: Sequence[str]) -> str:
    """'65 characters: ...' in full, or for a large vocabulary a count, the scripts it
    spans (from the Unicode names) and its first VOCAB_SHOWN // 2 characters."""
    if len(chars) <= VOCAB_SHOWN:
        return f"{len(chars)} characters: {describe_chars(chars, limit=VOCAB_SHOWN)}"
    scripts = Counter(_script(c) for c in chars).most_common()
    shown = ", ".join(f"{name} {count:,}" for name, count in scripts[:6])
    if len(scripts) > 6:
        shown += f", {len(scripts) - 6} more"
    sample = "".join(c if c.isprintable() and not c.isspace() else "" for c in chars)
    return (
        f"{len(chars):,} characters ({shown}); e.g. {sample[: VOCAB_SHOWN // 2]} … "
        f"{sample[-10:]} (all of them: --json)"
    )


def _script(char: str) -> str:
    # The first word of the Unicode name is the script for letters ("HANGUL SYLLABLE GA",
    # "CJK UNIFIED IDEOGRAPH-4E00", "LATIN SMALL LETTER A"); the rest by category.
    name = unicodedata.name(char, "")
    category = unicodedata.category(char)
    if category.startswith("L") and name:
        return name.split()[0].title().replace("Cjk", "CJK")
    return {"N": "digits", "P": "punctuation", "S": "symbols", "Z": "spaces", "C": "controls"}.get(
        category[0], "other"
    )


# Code points handled per numpy pass: bincount and fancy indexing work on int64 copies of
# their input, so doing it all at once would cost 8 bytes per character of a 200 MB text.
ENCODE_CHUNK = 1 << 24


def encode_array(text: str) -> tuple[Vocab, torch.Tensor]:
    """Build the vocabulary of `text` and encode it, in vectorised passes over the code points.

    A Python loop over 200 million characters takes minutes; numpy's bincount and a lookup
    table over code points take seconds. Working in chunks keeps the extra memory to the
    text's bytes, the ids and a few chunk-sized temporaries.
    """
    if text.isascii():
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        table_size = 128
    else:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table_size = int(codes.max()) + 1
    starts = range(0, len(codes), ENCODE_CHUNK)
    counts = np.zeros(table_size, dtype=np.int64)
    for i in starts:
        counts += np.bincount(codes[i : i + ENCODE_CHUNK], minlength=table_size)
    present = np.flatnonzero(counts)
    vocab = Vocab(chr(int(c)) for c in present)
    lookup = np.zeros(table_size, dtype=numpy_id_dtype(len(vocab)))
    lookup[present] = np.arange(len(present))
    ids = np.empty(len(codes), dtype=lookup.dtype)
    for i in starts:
        ids[i : i + ENCODE_CHUNK] = lookup[codes[i : i + ENCODE_CHUNK]]
    return vocab, torch.from_numpy(ids)


def encode_in(vocab: Vocab, text: str) -> tuple[torch.Tensor, list[str]]:
    """Encode `text` with an existing vocabulary, vectorised like `encode_array`.

    Returns the ids (compact dtype) and the characters of `text` that `vocab` lacks, in
    code-point order; when any are missing the ids are empty.
    """
    own, ids = encode_array(text)
    missing = [c for c in own.chars if c not in vocab]
    if missing:
        return torch.empty(0, dtype=id_dtype(len(vocab))), missing
    remap = torch.tensor([vocab.index[c] for c in own.chars], dtype=id_dtype(len(vocab)))
    return remap[ids.long()], []
