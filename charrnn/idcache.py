"""The id cache: a corpus encoded once, kept as a file of ids that training memory-maps.

An entry is two files in the cache folder, named by the corpus's content key (a hash of
its bytes, file by file, and of the encoding):

    <key>.ids    the ids, one per character, in the smallest dtype (1 byte up to 256 chars)
    <key>.json   what they mean: vocabulary, dtype, length, CRC-32 of the .ids bytes, and
                 a digest of vocabulary + ids (the corpus's identity in a checkpoint)

The key is computed from the bytes every time (never from sizes or modification times),
so a file rewritten in place is never served stale ids. The .json is written last and
names the length and checksum of the .ids, so an entry cut short by a crash or a full
disk, or damaged later, is detected when it is used and rebuilt, never trusted.

Building is one streaming pass in chunks of sources.CHUNK_BYTES: decode, note new
characters, write provisional ids; then one pass over the id file turns provisional ids
into the sorted vocabulary's ids. Memory stays a few chunks, whatever the corpus size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch

from . import sources as _sources
from . import utf8
from .cachedir import CACHE_ENV, default_cache_dir
from .errors import CacheError, CorpusError
from .filemode import shared_mode
from .sources import FileDecoder, Sources, decoder_warnings, read_chunks
from .utf8 import Utf8Text
from .vocab import Vocab, id_dtype

FORMAT = "charrnn-ids"
VERSION = 1
_MAX_CODE_POINT = 0x110000
_HIGH_BYTES = bytes(range(128, 256))


def _hasher() -> hashlib._Hash:
    # SHA-1 runs on the CPU's SHA instructions where they exist (about twice blake2b's speed
    # here); this is a content address, not a signature.
    return hashlib.sha1()


@dataclass
class Prepared:
    """A corpus as ids, mapped from the cache."""

    ids: torch.Tensor  # (N,) compact ids, a read-only view of the mapped file
    vocab: Vocab
    key: str  # hash of the bytes (file by file) and the encoding: the cache address
    digest: str  # hash of vocabulary + ids: what the model learns from
    path: str  # the .ids file
    files: list[dict]  # [{"name", "size"}] in the order joined
    cached: bool  # True: reused; False: built by this call
    warnings: list[str] = field(default_factory=list)

    @property
    def num_chars(self) -> int:
        return len(self.ids)


# ------------------------------------------------------------------------ key


class _KeyHasher:
    def __init__(self, encoding: str):
        self.h = _hasher()
        self.h.update(f"{FORMAT}-{VERSION}\0{encoding}\0".encode())
        self.size = 0

    def update(self, data: bytes) -> None:
        self.h.update(data)
        self.size += len(data)

    def end_file(self) -> int:
        # Framing: the same bytes split into files differently decode differently (a BOM
        # or a cut character at each file's edge), so the split is part of the key.
        size, self.size = self.size, 0
        self.h.update(b"\0end-of-file\0" + size.to_bytes(8, "little"))
        return size

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def content_key(sources: Sources, encoding: str) -> tuple[str, list[dict]]:
    """The cache key of rereadable sources, and each file's size as read."""
    hasher = _KeyHasher(encoding)
    files = []
    for source in sources.files:
        for chunk in read_chunks(source):
            hasher.update(chunk)
        files.append({"name": source.name, "size": hasher.end_file()})
    return hasher.hexdigest(), files


# ---------------------------------------------------------------------- reuse


def _entry_paths(folder: str, key: str) -> tuple[str, str]:
    return os.path.join(folder, key + ".ids"), os.path.join(folder, key + ".json")


def _file_chunks(f: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    size = size or _sources.CHUNK_BYTES
    while True:
        data = f.read(size)
        if not data:
            return
        yield data


def load(folder: str, key: str) -> tuple[Prepared | None, str | None]:
    """The entry for `key`, verified; (None, None) if there is none, (None, why) if it is
    damaged. Verifying reads the file (not the mapping), so it costs no resident memory."""
    ids_path, meta_path = _entry_paths(folder, key)
    if not os.path.exists(meta_path):
        return None, None
    if not os.path.isfile(meta_path):
        return None, f"{os.path.basename(meta_path)} is not a file"
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta["key"] != key:
            return None, "its description is not this version's"
        dtype = np.dtype(meta["dtype"])
        vocab = Vocab.from_list(meta["vocab"])
        num_chars = int(meta["num_chars"])
        if len(vocab) != meta["vocab_size"] or dtype.name not in ("uint8", "int16", "int32"):
            return None, "its description is damaged"
        expected = num_chars * dtype.itemsize
        if not os.path.isfile(ids_path):
            what = "a folder, not a file" if os.path.isdir(ids_path) else "missing"
            return None, f"{os.path.basename(ids_path)} is {what}"
        actual = os.path.getsize(ids_path)
        if actual != expected:
            return None, f"it is {actual} bytes instead of {expected} (truncated)"
        crc = 0
        with open(ids_path, "rb") as f:
            for chunk in _file_chunks(f):
                crc = zlib.crc32(chunk, crc)
        if crc != meta["crc32"]:
            return None, "its checksum does not match (damaged)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"it cannot be read ({type(e).__name__})"
    prepared = Prepared(
        ids=_map(ids_path, dtype, num_chars),
        vocab=vocab,
        key=key,
        digest=meta["digest"],
        path=ids_path,
        files=[],
        cached=True,
        warnings=list(meta.get("warnings") or []),
    )
    return prepared, None


def _map(path: str, dtype: np.dtype, num_chars: int) -> torch.Tensor:
    # Copy-on-write mapping: pages are shared with the page cache (and with every other
    # process training on this corpus) and read from disk only when touched; nothing
    # writes to them.
    array = np.memmap(path, dtype=dtype, mode="c", shape=(num_chars,))
    return torch.from_numpy(array)


# ---------------------------------------------------------------------- build


class _Provisional:
    """Writes provisional ids while the vocabulary is still growing.

    While the text has at most 128 distinct non-ASCII characters, a provisional id is one
    byte: the code point itself for ASCII, a slot from 128 up for the others in order of
    first appearance. Beyond that, the file is widened once to 4-byte code points.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.f = _temp(folder, ".ids")
        self.wide = False
        self.seen = np.zeros(_MAX_CODE_POINT, dtype=bool)
        self.known_ascii = b""
        self.slot = np.arange(_MAX_CODE_POINT, dtype=np.uint32)  # code point -> slot (u8 mode)
        self.slot_cps: list[int] = list(range(128))  # slot -> code point
        self.count = 0

    def add(self, piece: str | bytes | Utf8Text) -> None:
        if isinstance(piece, str):  # from another codec, checked: its UTF-8 is valid
            piece = piece.encode() if piece.isascii() else utf8.scan(piece.encode())  # type: ignore
        if isinstance(piece, Utf8Text):
            self._add_utf8(piece)
            return
        self._note_ascii(piece)
        if self.wide:
            self._write(np.frombuffer(piece, dtype=np.uint8).astype(np.uint32))
        else:
            self._write(piece)
        self.count += len(piece)

    def _note_ascii(self, data: bytes) -> None:
        # Deleting the known characters (and non-ASCII bytes) finds new ones at memory speed.
        new = data.translate(None, self.known_ascii + _HIGH_BYTES)
        if new:
            fresh = set(new)
            self.seen[list(fresh)] = True
            self.known_ascii += bytes(sorted(fresh))

    def _add_utf8(self, piece: Utf8Text) -> None:
        if piece.starts is not None:  # codes are the non-ASCII characters' only
            self._note_ascii(piece.data)
        codes = piece.codes  # (k,) uint32 code points
        unseen = codes[~self.seen[codes]]
        if len(unseen):
            new = np.unique(unseen)
            self.seen[new] = True
            for cp in new.tolist():
                if cp < 128:
                    self.known_ascii += bytes([cp])
                elif not self.wide:
                    if len(self.slot_cps) >= 256:
                        self._widen()
                    else:
                        self.slot[cp] = len(self.slot_cps)
                        self.slot_cps.append(cp)
        if self.wide:
            ids = utf8.collapse(piece, codes)
        else:
            ids = utf8.collapse(piece, self.slot[codes].astype(np.uint8))
        self._write(ids)
        self.count += len(ids)

    def _write(self, data: bytes | np.ndarray) -> None:
        self.f.write(data)

    def _widen(self) -> None:
        """Rewrite the one-byte ids written so far as code points and go on with those."""
        inverse = np.zeros(256, dtype=np.uint32)
        inverse[: len(self.slot_cps)] = self.slot_cps
        old = self.f
        old.flush()
        old.seek(0)
        self.f = _temp(self.folder, ".ids")
        for chunk in _file_chunks(old):
            self.f.write(inverse[np.frombuffer(chunk, dtype=np.uint8)])
        _discard(old)
        self.wide = True

    def finish(self, digest_prefix: bytes) -> tuple[BinaryIO, Vocab, np.dtype, int, str]:
        """Turn provisional ids into final ids: (file, vocab, dtype, crc32, digest)."""
        present = np.flatnonzero(self.seen)
        vocab = Vocab(chr(int(c)) for c in present)
        dtype = np.dtype(torch.empty(0, dtype=id_dtype(len(vocab))).numpy().dtype)
        digest = _hasher()
        digest.update(digest_prefix)
        crc = 0
        f = self.f
        f.flush()
        f.seek(0)
        if not self.wide:
            # provisional byte -> final id, as a 256-byte translation table
            table = bytearray(256)
            for slot, cp in enumerate(self.slot_cps):
                if self.seen[cp]:
                    table[slot] = int(np.searchsorted(present, cp))
            table = bytes(table)
            pos = 0
            for chunk in _file_chunks(f):
                final = chunk.translate(table)
                os.pwrite(f.fileno(), final, pos)
                pos += len(final)
                crc = zlib.crc32(final, crc)
                digest.update(final)
            return f, vocab, dtype, crc, digest.hexdigest()
        lookup = np.zeros(int(present[-1]) + 1, dtype=dtype)
        lookup[present] = np.arange(len(present))
        out = _temp(self.folder, ".ids")
        # Whole code points (4 bytes each), a chunk's worth: lookup's intp temporaries cost
        # 8 bytes per id.
        for chunk in _file_chunks(f, 4 * max(1, _sources.CHUNK_BYTES // 4)):
            final = lookup[np.frombuffer(chunk, dtype=np.uint32)].tobytes()
            out.write(final)
            crc = zlib.crc32(final, crc)
            digest.update(final)
        _discard(f)
        return out, vocab, dtype, crc, digest.hexdigest()


def _temp(folder: str, suffix: str) -> BinaryIO:
    fd, path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        shared_mode(fd)  # a shared cache folder is read by others: not mkstemp's 0600
    except OSError:
        os.close(fd)
        os.unlink(path)
        raise
    f = os.fdopen(fd, "w+b")
    f.temp_path = path  # type: ignore[attr-defined]
    return f


def _discard(f: BinaryIO) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(OSError):
        os.unlink(f.temp_path)  # type: ignore[attr-defined]


def build(sources: Sources, encoding: str, folder: str) -> Prepared:
    """Read, decode and encode the sources in one streaming pass into a new cache entry."""
    try:
        provisional = _Provisional(folder)
    except OSError as e:
        raise _cache_error(folder, e, sources) from None
    final = None
    try:
        hasher = _KeyHasher(encoding)
        decoded = []
        files = []
        for source in sources.files:
            decoder = FileDecoder(source.name, encoding)
            for chunk in read_chunks(source):
                hasher.update(chunk)
                provisional.add(decoder.feed(chunk))
            provisional.add(decoder.finish())
            files.append({"name": source.name, "size": hasher.end_file()})
            decoded.append((source.name, decoder))
        if provisional.count == 0:
            raise CorpusError(f"corpus {sources.name} is empty: give it some text to learn from")
        key = hasher.hexdigest()
        present = [chr(int(c)) for c in np.flatnonzero(provisional.seen)]
        final, vocab, dtype, crc, digest = provisional.finish(json.dumps(present).encode())
        final.flush()
        warnings = decoder_warnings(decoded)
        ids_path, meta_path = _entry_paths(folder, key)
        _check_not_folders(ids_path, meta_path)
        os.replace(final.temp_path, ids_path)  # type: ignore[attr-defined]
        final.close()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "key": key,
            "encoding": encoding,
            "dtype": dtype.name,
            "num_chars": provisional.count,
            "vocab_size": len(vocab),
            "vocab": vocab.to_list(),
            "crc32": crc,
            "digest": digest,
            "warnings": warnings,
        }
        _write_meta(folder, meta_path, meta)
    except OSError as e:
        raise _cache_error(folder, e, sources) from None
    finally:
        # Whatever was not renamed into place is removed: nothing half-written stays.
        _discard(provisional.f)
        if final is not None and os.path.exists(final.temp_path):  # type: ignore[attr-defined]
            _discard(final)
    return Prepared(
        ids=_map(ids_path, dtype, provisional.count),
        vocab=vocab,
        key=key,
        digest=digest,
        path=ids_path,
        files=files,
        cached=False,
        warnings=warnings,
    )


def _check_not_folders(*paths: str) -> None:
    # A folder where an entry's file belongs is someone's, not damage to rebuild over.
    for path in paths:
        if os.path.isdir(path):
            raise CacheError(
                f"the id cache entry {path} is a folder, not a file: move or remove it "
                f"(rm -r {path}), or pass --cache-dir (or set {CACHE_ENV}) to another folder"
            )


def _write_meta(folder: str, meta_path: str, meta: dict[str, Any]) -> None:
    # Written last and renamed into place: an entry with its meta file is complete.
    meta_tmp = _temp(folder, ".json")
    meta_tmp.write(json.dumps(meta).encode())
    meta_tmp.flush()
    os.fsync(meta_tmp.fileno())
    os.replace(meta_tmp.temp_path, meta_path)  # type: ignore[attr-defined]
    meta_tmp.close()


def _cache_error(folder: str, e: OSError, sources: Sources) -> CacheError:
    fix = f"pass --cache-dir (or set {CACHE_ENV}) to a writable folder with room"
    if e.errno == errno.ENOSPC:
        return CacheError(
            f"no space left on the device while writing the id cache in {folder!r} (it needs "
            f"about 1 byte per character of {sources.name}): free some space or {fix}"
        )
    if e.errno == errno.EROFS:
        return CacheError(
            f"cannot write the id cache in {folder!r} (it is on a read-only file system): {fix}"
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return CacheError(f"cannot write the id cache in {folder!r} (permission denied): {fix}")
    return CacheError(f"cannot write the id cache in {folder!r} ({e.strerror or e}): {fix}")


def prepare(
    sources: Sources,
    encoding: str,
    folder: str | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> Prepared:
    """The corpus as mapped ids: reused from the cache when its content key is there and
    the entry verifies, built (and cached) otherwise."""
    folder = folder or default_cache_dir()
    notice = on_notice or (lambda message: None)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CacheError(
            f"the id cache {folder!r} is a file, not a folder: pass --cache-dir (or set "
            f"{CACHE_ENV}) to a folder"
        )
    if sources.rereadable:
        key, files = content_key(sources, encoding)
        prepared, damaged = load(folder, key)
        if prepared is not None:
            prepared.files = files
            return prepared
        if damaged:
            notice(f"the cached ids of {sources.name} were unusable ({damaged}); rebuilding them")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise _cache_error(folder, e, sources) from None
    return build(sources, encoding, folder)
