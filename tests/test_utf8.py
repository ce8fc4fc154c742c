"""UTF-8 decoded from the bytes in numpy (charrnn/utf8.py), and the id cache built with it:
the same ids, vocabulary and errors as decoding the text with Python's codec at once."""

from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import idcache, sources, utf8
from charrnn.errors import CorpusError
from charrnn.vocab import encode_array

# One alphabet per UTF-8 length: 1 (ASCII), 2 (é, Cyrillic), 3 (Hangul, €, the edges
# around the surrogates) and 4 bytes (emoji, the last code point).
ALPHABET = st.sampled_from(
    [
        *"ab \n.",
        "é",
        "ж",
        "\u07ff",
        "한",
        "국",
        "€",
        "\u0800",
        "\ud7ff",
        "\ue000",
        "\uffff",
        "🙂",
        "\U00010000",
        "\U0010ffff",
    ]
)
TEXTS = st.lists(ALPHABET, min_size=1, max_size=200).map("".join)
# Mostly ASCII with the odd multi-byte character: the sparse path.
SPARSE = st.lists(st.sampled_from(["abcdefgh ijk\n"] * 30 + ["é", "한", "🙂"]), max_size=40).map(
    "".join
)


def _reference(data: bytes) -> tuple[list[int], list[int]]:
    """(byte offsets, code points) of the non-ASCII characters, by Python's codec."""
    starts, codes, at = [], [], 0
    for char in data.decode("utf-8"):
        if ord(char) >= 0x80:
            starts.append(at)
            codes.append(ord(char))
        at += len(char.encode("utf-8"))
    return starts, codes


@settings(max_examples=200, deadline=None)
@given(st.one_of(TEXTS, SPARSE), st.sampled_from([1, 4, 7, 64, 1 << 21]))
def test_scan_decodes_like_the_codec(text, block):
    data = text.encode("utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utf8, "BLOCK_BYTES", block)  # small blocks cut characters everywhere
        scanned = utf8.scan(data)
    assert scanned is not None and scanned.text() == text
    if scanned.starts is None:  # dense: every character, as its code point
        assert scanned.codes.tolist() == [ord(c) for c in text]
        assert utf8.collapse(scanned, scanned.codes).tolist() == [ord(c) for c in text]
        return
    starts, codes = _reference(data)
    assert scanned.starts.tolist() == starts and scanned.codes.tolist() == codes
    values = np.arange(len(codes), dtype=np.uint32) + 1000
    assert utf8.collapse(scanned, values).tolist() == _numbered(text)


def _numbered(text: str) -> list[int]:
    """ASCII as itself, the i-th non-ASCII character as 1000 + i."""
    out, i = [], 0
    for c in text:
        if ord(c) < 0x80:
            out.append(ord(c))
        else:
            out.append(1000 + i)
            i += 1
    return out


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXTS, SPARSE), st.binary(min_size=1, max_size=4), st.integers(0, 10**6))
def test_scan_refuses_exactly_what_the_codec_refuses(text, junk, where):
    data = text.encode("utf-8")
    at = where % (len(data) + 1)
    data = data[:at] + junk + data[at:]
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utf8, "BLOCK_BYTES", 16)
        assert (utf8.scan(data) is not None) == valid


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xf5\x80",
        b"\x80",
        b"\xe2\x82",
        b"\xc3",
    ],
)
def test_scan_refuses_overlongs_surrogates_beyond_unicode_and_cut_characters(bad):
    assert utf8.scan(b"ok " * 10 + bad) is None
    assert utf8.scan(b"ok " * 10 + bad + b"\n") is None
    assert utf8.scan("한국어".encode() * 10 + bad + b"\n") is None


def _prepare(tmp: Path, data: bytes, chunk: int, monkeypatch) -> idcache.Prepared:
    monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(utf8, "BLOCK_BYTES", 5)
    (tmp / "c.txt").write_bytes(data)
    found = sources.resolve([str(tmp / "c.txt")], "utf-8")
    return idcache.prepare(found, "utf-8", str(tmp / "cache"))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, then é once.\n" * 9 + "한 줄\n" + "more ascii\n" * 9,
        "한국어 문장입니다. 🙂 mixed with ASCII — and é.\n" * 7,
        "\U0010ffff\U00010000" + "ж" * 20 + "x",
        "".join(chr(0xAC00 + i) for i in range(300)) + " abc",  # > 256: wide ids
    ],
)
def test_prepared_ids_and_vocab_equal_encoding_the_text_whole(tmp_path, monkeypatch, chunk, text):
    prepared = _prepare(tmp_path, text.encode("utf-8"), chunk, monkeypatch)
    vocab, ids = encode_array(text)
    assert prepared.vocab == vocab
    assert prepared.ids.dtype == ids.dtype and torch.equal(prepared.ids, ids)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_a_byte_order_mark_before_non_ascii_text_is_dropped(tmp_path, monkeypatch, chunk):
    text = "한국어 text é\n" * 5
    prepared = _prepare(tmp_path, codecs.BOM_UTF8 + text.encode(), chunk, monkeypatch)
    assert prepared.vocab.decode(prepared.ids.tolist()) == text
    assert any("byte-order mark" in w for w in prepared.warnings)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6, 1 << 20])
@pytest.mark.parametrize(
    "bad", [b"\xe2\x82(", b"\xed\xa0\x80", b"\xff", b"\xc3\xa9\x80", b"\xf0\x9f\x99"]
)
def test_invalid_utf8_names_the_byte_offset_and_reason_of_the_codec(
    tmp_path, monkeypatch, chunk, bad
):
    data = "é ascii 한\n".encode() * 3 + bad + b" tail \xc3\xa9 more text\n"
    with pytest.raises(UnicodeDecodeError) as codec:
        data.decode("utf-8")
    e = codec.value
    with pytest.raises(CorpusError) as raised:
        _prepare(tmp_path, data, chunk, monkeypatch)
    message = str(raised.value)
    assert f"is not valid utf-8 (byte offset {e.start}: {e.reason})" in message
    assert "--encoding" in message


@pytest.mark.parametrize("chunk", [1, 2, 5, 1 << 20])
@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_file_cut_inside_its_last_character_keeps_the_rest(tmp_path, monkeypatch, chunk, cut):
    text = "ascii é 한국\n" * 4 + "🙂"
    data = text.encode()[:-cut]
    prepared = _prepare(tmp_path, data, chunk, monkeypatch)
    assert prepared.vocab.decode(prepared.ids.tolist()) == text[:-1]
    assert any(f"dropped its last {4 - cut} byte(s)" in w for w in prepared.warnings)


def test_read_all_gives_the_text_of_every_kind_of_chunk(tmp_path, monkeypatch):
    text = "ascii only here\n" * 3 + "é 한 🙂\n" + "한국어" * 20
    monkeypatch.setattr(sources, "CHUNK_BYTES", 16)
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    assert sources.read_all(str(tmp_path / "c.txt"), "utf-8")[0] == text
