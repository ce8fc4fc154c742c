"""Where a corpus comes from: files, directories and stdin, read as one text in bounded chunks.

A corpus is one or more CORPUS arguments. Each is a file, `-` (stdin) or a directory; a
directory stands for every text file below it, in sorted order of their paths (compared
folder by folder), hidden files and folders (names starting with ".") left out. The
files are joined in the order given, each decoded on its own (so a byte-order mark at
the start of each is dropped, and an error names the file and its own byte offset), with
nothing added between them: end your files with a newline if they should not run into
each other.

Nothing here holds a whole file: `read_chunks` yields the raw bytes of each source in
chunks of CHUNK_BYTES and `FileDecoder` turns them into text chunk by chunk, with the
checks that make a text usable (encoding errors with their offset, NUL bytes, UTF-16
without --encoding, lone surrogates, a character cut at the end).
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from . import utf8
from .errors import CorpusError, UsageError
from .utf8 import Utf8Text

STDIN = "-"
STDIN_NAME = "<stdin>"
# Bytes read at a time. Preparation memory is a few times this, whatever the corpus size.
CHUNK_BYTES = 1 << 23
# How much of a file in a directory is looked at to decide whether it is text.
SNIFF_BYTES = 8192
# Encodings in which ASCII bytes stand for themselves (a pure-ASCII chunk needs no decoding).
ASCII_COMPATIBLE = ("utf-8", "ascii", "latin-1", "iso8859-1", "cp1252")
# Encodings whose strict decoders can never produce a lone surrogate.
_NO_SURROGATES = ("utf-8", "utf-16", "utf-32", "ascii", "latin-1", "iso8859", "cp", "mac")


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; a usage error for unknown codecs and for codecs that do
    not turn bytes into text (rot13, base64, hex, ...)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"unknown --encoding {encoding!r}: try utf-8 or latin-1") from None
    if not getattr(info, "_is_text_encoding", True):
        raise UsageError(
            f"--encoding {encoding!r} is not a text encoding (it transforms bytes, it does not "
            "decode them to text): use a text encoding such as utf-8 or latin-1"
        )
    return info.name


def is_wide(encoding: str) -> bool:
    """UTF-16/32 text holds NUL bytes legitimately."""
    return "16" in encoding or "32" in encoding


@dataclass(frozen=True)
class Source:
    path: str  # "-" for stdin
    name: str  # as shown in messages and recorded in the checkpoint
    rereadable: bool  # a regular file (a pipe, stdin or a device can be read only once)


@dataclass
class Sources:
    """The files a corpus is made of, in the order they are joined."""

    files: list[Source]
    name: str  # the CORPUS arguments, for messages
    notices: list[str] = field(default_factory=list)

    @property
    def rereadable(self) -> bool:
        return all(s.rereadable for s in self.files)


def _label(name: str, role: str) -> str:
    return f"corpus {name}" if role == "corpus" else name


def _stat(path: str, role: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CorpusError(
                f"{_label(repr(path), role)} is a broken symbolic link: point it at a real file"
            ) from None
        raise CorpusError(
            f"{_label(repr(path), role)} not found: check the path (or pass - to read stdin)"
        ) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorpusError(
                f"{_label(repr(path), role)} is a symbolic link loop (too many levels of "
                "symbolic links): point it at a real file"
            ) from None
        if e.errno == errno.EACCES:
            raise CorpusError(
                f"cannot read {_label(repr(path), role)}: permission denied"
            ) from None
        raise CorpusError(f"cannot read {_label(repr(path), role)}: {e.strerror or e}") from None


def _walk(folder: str) -> list[str]:
    """Every regular, non-hidden file below `folder`, sorted by path component by component."""

    def failed(e: OSError) -> None:
        reason = "permission denied" if e.errno == errno.EACCES else (e.strerror or str(e))
        raise CorpusError(
            f"cannot read folder {e.filename!r} inside corpus {folder!r}: {reason}; fix its "
            "permissions or leave it out"
        )

    found = []
    for root, dirs, files in os.walk(folder, onerror=failed):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            path = os.path.join(root, f)
            if not f.startswith(".") and os.path.isfile(path):
                found.append(path)
    return sorted(found, key=lambda p: os.path.relpath(p, folder).split(os.sep))


def _sniff(path: str, encoding: str) -> str | None:
    """Why the file at `path` is not text (None: it is). Raises for a file that cannot be
    read, that is UTF-16 without --encoding, or that is text in another encoding."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        reason = "permission denied" if e.errno == errno.EACCES else (e.strerror or str(e))
        raise CorpusError(
            f"cannot read corpus file {path!r}: {reason}; fix its permissions or leave it out"
        ) from None
    wide_hint = utf16_hint(head) if not is_wide(encoding) else None
    if wide_hint:
        raise CorpusError(_utf16_message(f"corpus file {path}", wide_hint, encoding))
    if not is_wide(encoding) and b"\x00" in head:
        return "binary"
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(head, final=False)
    except UnicodeDecodeError:
        # A few stray bytes: text in another encoding (an error the user must see).
        # Mostly undecodable bytes: an image, an archive, a PDF (skipped).
        high = sum(1 for b in head if b >= 0x80 or (b < 0x20 and b not in b"\t\n\r\f\v\x1b"))
        if high >= 0.25 * len(head):
            return "binary"
    return None


def resolve(paths: Sequence[str], encoding: str, role: str = "corpus") -> Sources:
    """Expand CORPUS arguments into the files to read, in order; nothing is read yet
    except the first bytes of files found in directories (to skip the non-text ones)."""
    if not paths:
        raise UsageError("give a CORPUS: one or more files or folders, or - for stdin")
    files: list[Source] = []
    notices: list[str] = []
    skipped: list[str] = []
    if list(paths).count(STDIN) > 1:
        raise UsageError("- (stdin) can be given only once as CORPUS")
    for path in paths:
        if path == STDIN:
            files.append(Source(STDIN, STDIN_NAME, rereadable=False))
            continue
        st = _stat(path, role)
        if stat.S_ISDIR(st.st_mode):
            texts = []
            for found in _walk(path):
                if os.path.getsize(found) == 0:
                    continue  # an empty file adds nothing
                if _sniff(found, encoding) is None:
                    texts.append(found)
                else:
                    skipped.append(found)
            if not texts:
                extra = f" ({len(skipped)} non-text file(s) skipped)" if skipped else ""
                raise CorpusError(
                    f"corpus directory {path!r} holds no text files{extra}: pass a folder "
                    "with text files in it, or the files themselves"
                )
            files += [Source(f, f, rereadable=True) for f in texts]
        else:
            files.append(Source(path, path, rereadable=stat.S_ISREG(st.st_mode)))
    if skipped:
        notices.append(f"skipped {len(skipped)} file(s) that are not text (e.g. {skipped[0]})")
    name = " ".join(STDIN_NAME if p == STDIN else p for p in paths)
    return Sources(files=files, name=name, notices=notices)


def _open(source: Source, role: str) -> BinaryIO:
    if source.path == STDIN:
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise CorpusError(
                f"cannot read {_label(STDIN_NAME, role)}: stdin is closed; pipe the text in "
                "(cat file.txt | charrnn ... -) or pass a file"
            )
        return stdin.buffer
    if os.path.isdir(source.path):
        raise CorpusError(f"{_label(repr(source.path), role)} is a directory: pass a text file")
    try:
        return open(source.path, "rb")  # closed by read_chunks
    except PermissionError:
        raise CorpusError(
            f"cannot read {_label(repr(source.path), role)}: permission denied"
        ) from None
    except OSError as e:
        raise CorpusError(
            f"cannot read {_label(repr(source.path), role)}: {e.strerror or e}"
        ) from None


def read_chunks(source: Source, role: str = "corpus", size: int | None = None) -> Iterator[bytes]:
    """The raw bytes of `source`, `size` (default CHUNK_BYTES) at a time."""
    size = size or CHUNK_BYTES
    f = _open(source, role)
    try:
        while True:
            try:
                data = f.read(size)
            except (OSError, ValueError) as e:
                what = getattr(e, "strerror", None) or str(e)
                if source.path == STDIN:
                    raise CorpusError(
                        f"cannot read {_label(STDIN_NAME, role)}: {what}; pipe the text in "
                        "or pass a file"
                    ) from None
                raise CorpusError(f"cannot read {_label(source.name, role)}: {what}") from None
            if not data:
                return
            yield data
    finally:
        if source.path != STDIN:
            f.close()


def utf16_hint(head: bytes) -> str | None:
    """The encoding the first bytes of a file look like when they are UTF-16/32 text: a
    byte-order mark, or (for mostly-ASCII text) a NUL byte every other byte."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    sample = head[: SNIFF_BYTES // 2 * 2]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) >= 0.3 * len(odd) and even.count(0) <= 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) >= 0.3 * len(even) and odd.count(0) <= 0.05 * len(odd):
        return "utf-16-be"
    return None


def _utf16_message(label: str, hint: str, encoding: str) -> str:
    return (
        f"{label} looks like {hint.upper()} text, not {encoding} (a byte-order mark or a NUL "
        f"byte every other byte): pass --encoding {hint}"
    )


class FileDecoder:
    """Decodes one file's bytes, chunk by chunk, into text a model can learn from.

    Raises CorpusError (naming the file and the byte offset) for bytes that are not valid
    in the encoding, NUL bytes (binary data), UTF-16/32 text read as something else and
    lone surrogates; drops a byte-order mark at the start and a character cut at the end,
    each reported in `warnings`.
    """

    def __init__(self, name: str, encoding: str, role: str = "corpus"):
        self.label = _label(name, role)
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.offset = 0  # bytes fed so far
        self.started = False  # some text has come out (a BOM can only be at the start)
        self.bom = False  # a byte-order mark was dropped
        self.cut = 0  # bytes of a partial last character dropped
        self._nul_is_binary = not is_wide(encoding)
        self._fast = encoding in ASCII_COMPATIBLE
        self._check_surrogates = not encoding.replace("_", "-").startswith(_NO_SURROGATES)
        # UTF-8 is checked and decoded from the bytes (utf8.scan); the Python codec is used
        # only to word an error and for the bytes of a character cut at the end of the file.
        self._utf8 = encoding == "utf-8"
        self._held = b""  # the start of a character cut by the chunk's end (UTF-8 only)

    def feed(self, data: bytes) -> str | bytes | Utf8Text:
        """The text of the next chunk. A chunk of pure ASCII in an ASCII-compatible encoding
        comes back as the bytes themselves: they are already the code points; other UTF-8
        as a Utf8Text (its bytes, checked, and the code points of its non-ASCII characters)."""
        if self.offset == 0 and self._nul_is_binary:
            hint = utf16_hint(data[:SNIFF_BYTES])
            if hint:
                raise CorpusError(_utf16_message(self.label, hint, self.encoding))
        if self._nul_is_binary:
            nul = data.find(b"\x00")
            if nul >= 0:
                raise CorpusError(
                    f"{self.label} looks like binary data (a NUL byte at offset "
                    f"{self.offset + nul}): pass a text file"
                )
        if self._fast and data.isascii() and not self._held and not self._decoder.getstate()[0]:
            self.offset += len(data)
            self.started = self.started or bool(data)
            return data
        if self._utf8:
            return self._feed_utf8(data)
        text = self._decode(data, final=False)
        self.offset += len(data)
        return text

    def _feed_utf8(self, data: bytes) -> Utf8Text | str:
        held, data = self._held, self._held + data if self._held else data
        self.offset -= len(held)  # `data` now starts where the held bytes did
        end = utf8.complete_length(data)
        whole, self._held = (data[:end], data[end:]) if end < len(data) else (data, b"")
        scanned = utf8.scan(whole)
        if scanned is None:  # not UTF-8: the codec says where and why (and raises)
            text = self._decode(data, final=False)
            self._held = self._decoder.getstate()[0]
            self._decoder.reset()
            self.offset += len(data)
            return text
        self.offset += len(data)
        if not self.started and whole:
            self.started = True
            if whole.startswith(codecs.BOM_UTF8):  # it marks the encoding; it is not text
                self.bom = True
                bom = len(codecs.BOM_UTF8)
                starts = None if scanned.starts is None else scanned.starts[1:] - bom
                return Utf8Text(whole[bom:], starts, scanned.codes[1:])
        return scanned

    def finish(self) -> str:
        """The text still held back (the end of a multi-byte character), at the end of the file."""
        held, self._held = self._held, b""
        self.offset -= len(held)
        text = self._decode(held, final=True)
        self.offset += len(held)
        return text

    def _decode(self, data: bytes, final: bool) -> str:
        pending = len(self._decoder.getstate()[0])
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as e:
            # `head -c` cuts a file mid-character; keep the text and drop the partial one.
            if final and e.reason == "unexpected end of data" and e.end == pending + len(data):
                self.cut = pending + len(data) - e.start
                self._decoder.reset()
                text = ""
            else:
                at = self.offset - pending + e.start
                raise CorpusError(
                    f"{self.label} is not valid {self.encoding} (byte offset {at}: {e.reason}): "
                    "pass --encoding with the file's encoding, e.g. --encoding latin-1"
                ) from None
        if not self.started and text:
            self.started = True
            if text[0] == "\ufeff":  # a byte-order mark marks the encoding; it is not text
                self.bom = True
                text = text[1:]
        if self._check_surrogates and text and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise CorpusError(
                    f"{self.label} decodes to a lone surrogate (U+{ord(text[e.start]):04X}, "
                    f"near byte offset {self.offset}) in {self.encoding}, which is not text: "
                    "check --encoding"
                ) from None
        return text


def as_str(piece: str | bytes | Utf8Text) -> str:
    """A piece of `FileDecoder.feed` as text."""
    if isinstance(piece, bytes):
        return piece.decode("ascii")
    return piece if isinstance(piece, str) else piece.text()


def read_all(path: str, encoding: str, role: str = "corpus") -> tuple[str, list[str]]:
    """One source read whole (for `eval` and small texts): the text and its warnings."""
    encoding = check_encoding(encoding)
    if path == STDIN:
        source = Source(STDIN, STDIN_NAME, rereadable=False)
    else:
        st = _stat(path, role)
        if stat.S_ISDIR(st.st_mode):
            raise CorpusError(f"{_label(repr(path), role)} is a directory: pass a text file")
        source = Source(path, path, rereadable=stat.S_ISREG(st.st_mode))
    decoder = FileDecoder(source.name, encoding, role)
    parts = []
    for chunk in read_chunks(source, role):
        piece = decoder.feed(chunk)
        parts.append(as_str(piece))
    parts.append(decoder.finish())
    return "".join(parts), decoder_warnings([(source.name, decoder)], role)


def decoder_warnings(decoded: list[tuple[str, FileDecoder]], role: str = "corpus") -> list[str]:
    """The warnings of a corpus's files, each kind said once."""
    warnings = []
    boms = [name for name, d in decoded if d.bom]
    if boms:
        where = _label(boms[0], role) if len(boms) == 1 else f"{len(boms)} files (e.g. {boms[0]})"
        warnings.append(
            f"dropped the byte-order mark (U+FEFF) at the start of {where}: it marks the "
            "encoding and is not learned as a character"
        )
    for name, d in decoded:
        if d.cut:
            warnings.append(
                f"{_label(name, role)} ends in the middle of a character; dropped its last "
                f"{d.cut} byte(s)"
            )
    return warnings
