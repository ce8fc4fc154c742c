"""UTF-8 checked and decoded in numpy, straight from the bytes, without a Python str.

A corpus that is nearly all ASCII has a few multi-byte characters in every chunk. Decoding
such a chunk to a str and that to 4-byte code points costs a pass and several chunk-sized
int64 temporaries per character, for the sake of a handful of characters. Here only the
bytes >= 0x80 are looked at: their positions are found in one vectorised pass, checked
against RFC 3629 and combined into code points, so the cost follows the number of
non-ASCII bytes and the ASCII bytes stay what they are, their own code points. Text that
is mostly multi-byte (Korean, say) goes the same way, in blocks of BLOCK_BYTES so the
temporaries stay bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bytes checked and decoded per numpy pass: the temporaries are ~20 bytes per byte of a block.
BLOCK_BYTES = 1 << 21
# A chunk with more than 1 in DENSE_FRACTION bytes non-ASCII is decoded whole (see scan).
DENSE_FRACTION = 8

# Sequence length by lead byte: 0 for bytes that cannot start a character (continuation
# bytes, C0/C1 that would only give overlong forms, F5.. beyond U+10FFFF).
_LENGTH = np.zeros(256, dtype=np.uint8)
_LENGTH[:0x80] = 1
_LENGTH[0xC2:0xE0] = 2
_LENGTH[0xE0:0xF0] = 3
_LENGTH[0xF0:0xF5] = 4
# The payload bits of a lead byte, by sequence length.
_LEAD_BITS = np.array([0, 0x7F, 0x1F, 0x0F, 0x07], dtype=np.uint32)
# The second byte's range, narrower than 80..BF after four lead bytes: E0 (overlong), ED
# (surrogates), F0 (overlong), F4 (beyond U+10FFFF).
_SECOND_LO = np.full(256, 0x80, dtype=np.uint8)
_SECOND_HI = np.full(256, 0xBF, dtype=np.uint8)
_SECOND_LO[0xE0], _SECOND_HI[0xED], _SECOND_LO[0xF0], _SECOND_HI[0xF4] = 0xA0, 0x9F, 0x90, 0x8F


@dataclass(frozen=True)
class Utf8Text:
    """Valid UTF-8 of whole characters, with its characters decoded: for mostly-ASCII text
    only the non-ASCII ones (`starts` says where they are), for other text all of them
    (`starts` is None)."""

    data: bytes
    starts: np.ndarray | None  # (k,) int64 byte offsets in `data` of the non-ASCII characters
    codes: np.ndarray  # (k,) uint32 their code points; (num_chars,) all of them if no starts

    def text(self) -> str:
        return self.data.decode("utf-8")


def complete_length(data: bytes | np.ndarray) -> int:
    """The length of `data` without a multi-byte character cut at its end (which comes
    whole with the next chunk)."""
    n = len(data)
    for back in range(1, min(3, n) + 1):
        byte = int(data[n - back])
        if byte < 0x80:
            return n
        if byte >= 0xC0:  # a lead byte: is its sequence all there?
            need = int(_LENGTH[byte])
            return n - back if need > back else n
    return n


def scan(data: bytes) -> Utf8Text | None:
    """`data` decoded, or None when it is not valid UTF-8 or ends inside a character (the
    caller's codec then says where and why)."""
    array = np.frombuffer(data, dtype=np.uint8)
    # Mostly multi-byte text: CPython's decoder checks and decodes it faster than numpy
    # can, and every character needs its code point anyway.
    dense = np.count_nonzero(array >= 0x80) * DENSE_FRACTION > len(array)
    starts, codes = [], []
    begin = 0
    while begin < len(array):
        end = min(begin + max(4, BLOCK_BYTES), len(array))  # 4: a whole character at least
        if end < len(array):
            end = begin + complete_length(array[begin:end])
        decoded = _decode_dense(data[begin:end]) if dense else _decode_sparse(array[begin:end])
        if decoded is None:
            return None
        starts.append(decoded[0] + begin)
        codes.append(decoded[1])
        begin = end
    if dense:
        return Utf8Text(data, None, np.concatenate(codes) if codes else np.zeros(0, np.uint32))
    if not starts:
        return Utf8Text(data, np.zeros(0, np.int64), np.zeros(0, np.uint32))
    return Utf8Text(data, np.concatenate(starts), np.concatenate(codes))


def _decode_dense(block: bytes) -> tuple[int, np.ndarray] | None:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return 0, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _decode_sparse(block: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(offsets, code points) of the non-ASCII characters of `block` (uint8), or None if it
    is not whole characters of valid UTF-8."""
    num_high = np.count_nonzero(block >= 0x80)
    starts = np.flatnonzero(block >= 0xC0)  # (k,) int64
    if num_high == 0:
        return starts, np.zeros(0, np.uint32)
    lead = block[starts]
    length = _LENGTH[lead]
    # Each lead claims the next length-1 bytes, which must be continuation bytes; with as
    # many continuation bytes in all as claimed, none is left over, so the claims cover
    # them exactly and the text splits into whole, well-formed characters.
    if len(starts) == 0 or length.min() < 2:
        return None
    extra = length.astype(np.int64) - 1
    if int(extra.sum()) != num_high - len(starts) or int(starts[-1] + extra[-1]) >= len(block):
        return None
    last = len(block) - 1
    codes = lead.astype(np.uint32) & _LEAD_BITS[length]
    for k in (1, 2, 3):
        byte = block[np.minimum(starts + k, last)]
        claimed = length > k
        if not np.all(((byte & 0xC0) == 0x80) | ~claimed):
            return None
        if k == 1 and not np.all((byte >= _SECOND_LO[lead]) & (byte <= _SECOND_HI[lead])):
            return None
        codes = np.where(claimed, (codes << 6) | (byte & 0x3F), codes)
    return starts, codes


def collapse(piece: Utf8Text, values: np.ndarray) -> np.ndarray:
    """One id per character: the ASCII bytes of `piece` as themselves and each non-ASCII
    character's bytes replaced by its value (values[i] for the i-th), in values' dtype;
    with no `starts`, `values` are every character's already."""
    if piece.starts is None:
        return values
    array = np.frombuffer(piece.data, dtype=np.uint8)
    if len(piece.starts) == 0:
        return array.astype(values.dtype)
    extra = _LENGTH[array[piece.starts]].astype(np.int64) - 1  # (k,) continuation bytes
    ids = array[(array & 0xC0) != 0x80]  # drops the continuation bytes
    if ids.dtype != values.dtype:
        ids = ids.astype(values.dtype)
    ids[piece.starts - (np.cumsum(extra) - extra)] = values
    return ids
