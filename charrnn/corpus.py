"""Read a text, check it is usable, encode it and split off the validation part."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import CorpusError
from .idcache import Prepared
from .sources import STDIN, STDIN_NAME, read_all
from .vocab import Vocab, describe_chars, encode_array


@dataclass
class Text:
    text: str
    name: str  # the path, or "<stdin>"
    warnings: list[str] = field(default_factory=list)


def read_text(path: str, encoding: str = "utf-8", role: str = "corpus") -> Text:
    """Read and decode one text whole (`eval`'s input, small corpora), refusing what cannot
    be a text. `role` is "corpus" (to learn from) or "text" (to score): it words the errors."""
    text, warnings = read_all(path, encoding, role)
    name = STDIN_NAME if path == STDIN else path
    if not text:
        what = f"corpus {name} is empty: give it some text to learn from"
        if role != "corpus":
            what = f"{name} is empty: give it some text to score"
        raise CorpusError(what)
    return Text(text=text, name=name, warnings=warnings)


@dataclass
class Corpus:
    vocab: Vocab
    train: torch.Tensor  # (N_train,) compact integer ids
    val: torch.Tensor  # (N_val,)
    name: str
    warnings: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # [{"name", "size"}], in the order joined
    key: str | None = None  # the id cache's content key (None: built in memory)
    digest: str | None = None  # hash of vocabulary + ids: the text the run learns from

    @property
    def num_chars(self) -> int:
        return len(self.train) + len(self.val)

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps about the corpus (beside `first_char`)."""
        rec: dict[str, Any] = {"name": self.name, "num_chars": self.num_chars}
        if self.files:
            rec["files"] = [dict(f) for f in self.files]
        if self.digest is not None:
            rec["digest"] = self.digest
            rec["key"] = self.key
        return rec


def split_sizes(num_chars: int, val_fraction: float) -> tuple[int, int]:
    num_val = int(num_chars * val_fraction)
    return num_chars - num_val, num_val


def _fraction_holding(num_chars: int, count: int) -> float:
    """The smallest --val-fraction, rounded up to two significant digits, that holds out
    at least `count` of `num_chars` characters."""
    fraction = count / num_chars
    digits = 1 - math.floor(math.log10(fraction))
    fraction = math.ceil(fraction * 10**digits) / 10**digits
    while split_sizes(num_chars, fraction)[1] < count:  # float rounding in int(n * f)
        fraction = math.nextafter(fraction, 1.0)
    return fraction


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
    _check_vocab(text.name, own_vocab, vocab)
    train, val = _split(text.name, ids, val_fraction, min_train_chars)
    return Corpus(
        vocab=own_vocab, train=train, val=val, name=text.name, warnings=list(text.warnings)
    )


def corpus_from_prepared(
    prepared: Prepared,
    name: str,
    val_fraction: float,
    min_train_chars: int,
    resume_record: dict[str, Any] | None = None,
    vocab: Vocab | None = None,
) -> Corpus:
    """A Corpus whose train and val parts are views of the mapped id file (nothing copied).

    With `resume_record` (the checkpoint's `corpus`) the text must be the one the run was
    trained on: compared by content digest when the checkpoint has one, else (checkpoints
    from before the digest) by vocabulary, as `vocab` gives it.
    """
    old_digest = resume_record.get("digest") if isinstance(resume_record, dict) else None
    if old_digest and old_digest != prepared.digest:
        raise CorpusError(
            f"corpus {name} does not match the text the run was trained on "
            f"({_what_changed(resume_record, prepared, vocab)}): resume with the same corpus, "
            "or start a new run with --force"
        )
    _check_vocab(name, prepared.vocab, vocab)
    train, val = _split(name, prepared.ids, val_fraction, min_train_chars)
    return Corpus(
        vocab=prepared.vocab,
        train=train,
        val=val,
        name=name,
        warnings=list(prepared.warnings),
        files=list(prepared.files),
        key=prepared.key,
        digest=prepared.digest,
    )


def _what_changed(old: dict[str, Any], new: Prepared, vocab: Vocab | None) -> str:
    """Words for how a corpus differs from the one a checkpoint recorded."""
    parts = []
    old_files = old.get("files")
    if isinstance(old_files, list):
        before = {f.get("name"): f.get("size") for f in old_files if isinstance(f, dict)}
        after = {f["name"]: f["size"] for f in new.files}
        added = [n for n in after if n not in before]
        gone = [n for n in before if n not in after]
        resized = [n for n in after if n in before and before[n] != after[n]]
        if added:
            parts.append(f"new files: {', '.join(map(str, added[:3]))}")
        if gone:
            parts.append(f"files no longer there: {', '.join(map(str, gone[:3]))}")
        for n in resized[:3]:
            parts.append(f"{n}: {before[n]:,} bytes then, {after[n]:,} now")
    old_chars = old.get("num_chars")
    if old_chars != new.num_chars:
        then = f"{old_chars:,}" if isinstance(old_chars, int) else "?"
        parts.append(f"{then} characters then, {new.num_chars:,} now")
    if vocab is not None and vocab != new.vocab:
        parts.append(_vocab_diff(new.vocab, vocab))
    if not parts:
        parts.append("the same size, but different content")
    return "; ".join(parts)


def _check_vocab(name: str, own_vocab: Vocab, vocab: Vocab | None) -> None:
    if len(own_vocab) < 2:
        raise CorpusError(
            f"corpus {name} has only one distinct character "
            f"({own_vocab.chars[0]!r}): there is nothing to predict; use a real text"
        )
    if vocab is not None and own_vocab != vocab:
        raise CorpusError(
            f"corpus {name} does not match the checkpoint's vocabulary "
            f"({_vocab_diff(own_vocab, vocab)}): resume with the corpus the run was trained "
            "on, or start a new run"
        )


def _vocab_diff(own_vocab: Vocab, vocab: Vocab) -> str:
    extra = [c for c in own_vocab.chars if c not in vocab]
    absent = [c for c in vocab.chars if c not in own_vocab]
    return "; ".join(
        part
        for part in (
            f"new: {describe_chars(extra)}" if extra else "",
            f"absent: {describe_chars(absent)}" if absent else "",
        )
        if part
    )


def _split(
    name: str, ids: torch.Tensor, val_fraction: float, min_train_chars: int
) -> tuple[torch.Tensor, torch.Tensor]:
    num_train, num_val = split_sizes(len(ids), val_fraction)
    if num_val < 2 and 2 / val_fraction > max(min_train_chars / (1 - val_fraction), 10**6):
        # The held-out part is what is short (a tiny --val-fraction): more text or smaller
        # windows would not help until it is absurdly long (over a million characters just
        # to hold out two); a larger fraction does. Otherwise the length below is the fix.
        fraction = _fraction_holding(len(ids), 2)
        fix = f"raise --val-fraction to {fraction:g} or more"
        if fraction >= 1 or split_sizes(len(ids), fraction)[0] < min_train_chars:
            # The training part is short too: a usual fraction, and the length it needs.
            fraction = min(max(fraction, 0.1), 0.5)
            need = max(min_train_chars / (1 - fraction), 2 / fraction)
            fix = (
                f"raise --val-fraction (to {fraction:g}, say) and give at least "
                f"{int(need) + 1} characters, or lower --batch-size / --seq-len"
            )
        raise CorpusError(
            f"corpus {name} leaves too little for validation: --val-fraction {val_fraction:g} "
            f"of its {len(ids)} characters holds out {num_val}, and validation needs at "
            f"least 2; {fix}"
        )
    if num_train < min_train_chars or num_val < 2:
        need = max(min_train_chars / (1 - val_fraction), 2 / val_fraction)
        raise CorpusError(
            f"corpus {name} is too short: {len(ids)} characters, but one training window "
            f"needs {min_train_chars} ({num_train} left after holding out {val_fraction:g}) and "
            f"validation at least 2; give at least {int(need) + 1} characters, or lower "
            "--batch-size / --seq-len"
        )
    return ids[:num_train], ids[num_train:]
