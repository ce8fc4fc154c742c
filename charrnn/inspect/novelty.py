"""Is the model writing or reciting? Which parts of a text also occur in the training text.

For every position i of the sample we find the longest prefix of sample[i:] that occurs
anywhere in the corpus (its "matching statistic"). The n-gram starting at i was copied
exactly when that length is at least n, and the longest copied substring is the largest
of them. One suffix array of the corpus answers each position with a binary search:
suffixes that share a prefix with the query sit next to the place where the query would
be inserted in sorted order, so the longest match is with one of the two neighbours.

The index is built on the UTF-8 bytes (libdivsufsort, via pydivsufsort: O(N) memory of
4 bytes per byte of corpus). A match that starts on a character boundary of valid UTF-8
covers whole characters, so byte matches turn into character counts exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import MissingExtraError, OutputError, UsageError

NGRAM_SIZES = (5, 10, 20, 40)
# Bytes of the query compared in one binary search; doubled for longer copies.
_QUERY_BYTES = 512
_CRC_CHUNK_BYTES = 1 << 24  # the saved array is checksummed 16 MiB at a time


@dataclass
class Novelty:
    ngrams: dict[int, float | None]  # n -> share of the sample's n-grams found in the corpus
    longest_length: int  # characters
    longest_text: str
    num_chars: int

    def to_dict(self) -> dict:
        return {
            "ngrams": {str(n): share for n, share in self.ngrams.items()},
            "longest_copied": {"length": self.longest_length, "text": self.longest_text},
            "num_chars": self.num_chars,
        }


class CorpusIndex:
    """A suffix array over the corpus's UTF-8 bytes, for longest-match queries."""

    def __init__(self, text: str, suffix_array: np.ndarray | None = None):
        self.data = text.encode("utf-8")
        self.size = len(self.data)
        if suffix_array is not None:
            self.sa = suffix_array
            return
        try:
            from pydivsufsort import divsufsort
        except ImportError:
            raise MissingExtraError(
                "charrnn novelty needs pydivsufsort: pip install 'charrnn[novelty]'"
            ) from None
        # divsufsort hands the buffer to C through ctypes, which wants it writable.
        self.sa = np.asarray(divsufsort(bytearray(self.data)))  # (N,) int32 / int64

    def key(self) -> str:
        return _content_key(self.data)

    def save(self, path: str) -> None:
        """Write the suffix array to `path` (.npy) and its key to `path`.json, atomically:
        an interrupted save never leaves a file that looks whole."""
        folder = os.path.dirname(os.path.abspath(path))
        meta = {
            "key": self.key(),
            "bytes": self.size,
            "dtype": str(self.sa.dtype),
            "crc32": _array_crc(self.sa),
        }
        try:
            for target, write in ((path, self._write_array), (path + ".json", _writer(meta))):
                fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as e:
            raise OutputError(
                f"cannot write the index {path} ({e.strerror or e}): choose a writable --index"
            ) from None

    def _write_array(self, f) -> None:
        np.save(f, self.sa, allow_pickle=False)

    def longest_match(self, query: bytes) -> int:
        """The length in bytes of the longest prefix of `query` found in the corpus."""
        data, sa, q = self.data, self.sa, len(query)
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            start = int(sa[mid])
            if data[start : start + q] < query:
                lo = mid + 1
            else:
                hi = mid
        best = 0
        for j in (lo - 1, lo):
            if 0 <= j < self.size:
                start = int(sa[j])
                best = max(best, _common_prefix(query, data[start : start + q]))
        return best


def _writer(meta: dict):
    return lambda f: f.write(json.dumps(meta).encode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _content_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def is_index(path: str) -> bool:
    """Whether `path` holds an index this module wrote (so it may be replaced)."""
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return "key" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def load_index(text: str, path: str) -> CorpusIndex | None:
    """The index saved at `path` if it was built from exactly this text and is intact,
    else None (see `open_index` for why)."""
    return open_index(text, path)[0]


def open_index(text: str, path: str) -> tuple[CorpusIndex | None, str | None]:
    """(the index saved at `path`, None) if it was built from exactly this text and its
    array is the one saved; else (None, None) where there is no index or it belongs to
    another text, and (None, why) where it is damaged. The array is memory-mapped; opening
    it costs a hash of the text and one CRC-32 pass over the array, not a rebuild.

    The text's key alone would trust an array altered in place (zeroed, permuted: the same
    size), and a wrong suffix array answers every query silently wrong."""
    try:
        with open(path + ".json", encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None, None
    data = text.encode("utf-8")
    if not isinstance(meta, dict) or meta.get("key") != _content_key(data):
        return None, None  # none, or built from another text: rebuilt, nothing is wrong
    try:
        sa = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        return None, f"its array cannot be read ({type(e).__name__})"
    if meta.get("bytes") != len(data) or sa.shape != (len(data),):
        return None, f"its array holds {sa.size} entries instead of {len(data)} (truncated)"
    if str(sa.dtype) != meta.get("dtype") or sa.dtype.kind not in "iu":
        return None, f"its array is {sa.dtype} instead of {meta.get('dtype')}"
    if "crc32" not in meta:
        return None, "it has no checksum (written by an older charrnn)"
    if _array_crc(sa) != meta["crc32"]:
        return None, "its checksum does not match (the array was changed)"
    return CorpusIndex(text, suffix_array=sa), None


def _array_crc(sa: np.ndarray) -> int:
    """CRC-32 of the array's bytes, read in bounded chunks (the array may be mapped)."""
    flat = sa.reshape(-1)
    step = max(1, _CRC_CHUNK_BYTES // max(1, flat.itemsize))
    crc = 0
    for i in range(0, len(flat), step):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(flat[i : i + step])).cast("B"), crc)
    return crc


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix, by binary search over slice equality (memcmp)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def matching_lengths(
    index: CorpusIndex,
    sample: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """For each character position i, the length (in characters) of the longest
    substring starting at i that occurs in the corpus."""
    raw = sample.encode("utf-8")
    # offsets[i]: where character i starts in `raw`; offsets[-1] == len(raw).
    offsets = [0]
    for ch in sample:
        offsets.append(offsets[-1] + len(ch.encode("utf-8")))
    lengths = []
    for i in range(len(sample)):
        start = offsets[i]
        width = _QUERY_BYTES
        while True:
            query = raw[start : start + width]
            match = index.longest_match(query)
            if match < len(query) or start + width >= len(raw):
                break
            width *= 2  # the whole window matched: look further
        # Whole characters within `match` bytes.
        lengths.append(bisect_right(offsets, start + match) - 1 - i)
        if on_progress is not None and (i % 1024 == 0 or i + 1 == len(sample)):
            on_progress(i + 1, len(sample))
    return lengths


def novelty(
    index: CorpusIndex,
    sample: str,
    sizes: Sequence[int] = NGRAM_SIZES,
    on_progress: Callable[[int, int], None] | None = None,
) -> Novelty:
    """Shares of the sample's n-grams found in the corpus, and its longest copy."""
    if not sample:
        raise UsageError("the text to check is empty: give a file or pipe a sample in")
    lengths = matching_lengths(index, sample, on_progress)
    shares: dict[int, float | None] = {}
    for n in sizes:
        count = len(sample) - n + 1  # n-grams in the sample
        shares[n] = sum(1 for m in lengths[:count] if m >= n) / count if count > 0 else None
    best = max(range(len(sample)), key=lambda i: lengths[i])
    return Novelty(shares, lengths[best], sample[best : best + lengths[best]], len(sample))
