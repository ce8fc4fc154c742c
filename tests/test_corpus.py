"""Text in: decoding, the vocabulary, compact ids, the split and the stream layout."""

from __future__ import annotations

import pytest
import torch

from charrnn.batches import make_streams, shard_span
from charrnn.corpus import Text, build_corpus, read_text
from charrnn.errors import CorpusError
from charrnn.vocab import Vocab, encode_array, encode_in


def test_vocabulary_is_sorted_code_points_and_round_trips_unicode():
    text = "안녕하세요 세계! 🙂 café\n" * 3
    vocab, ids = encode_array(text)
    assert vocab.chars == sorted(set(text))
    assert "🙂" in vocab and "안" in vocab
    assert vocab.decode(ids.tolist()) == text
    assert vocab.encode(text) == ids.tolist()


@pytest.mark.parametrize(
    ("num_chars", "dtype"), [(50, torch.uint8), (300, torch.int16), (40000, torch.int32)]
)
def test_ids_use_the_smallest_integer_type(num_chars, dtype):
    text = "".join(chr(0x20000 + i) for i in range(num_chars))  # beyond the BMP too
    vocab, ids = encode_array(text)
    assert ids.dtype == dtype and len(vocab) == num_chars
    assert vocab.decode(ids.tolist()) == text


@pytest.mark.parametrize("text", ["the cat sat on the mat. " * 5, "naïve café — 🙂 ok " * 5])
def test_encoding_in_chunks_matches_encoding_at_once(monkeypatch, text):
    whole_vocab, whole_ids = encode_array(text)
    monkeypatch.setattr("charrnn.vocab.ENCODE_CHUNK", 7)  # many chunks, a ragged last one
    vocab, ids = encode_array(text)
    assert vocab == whole_vocab and torch.equal(ids, whole_ids)
    assert vocab.decode(ids.tolist()) == text


def test_encoding_in_a_given_vocabulary_uses_its_ids_and_names_strangers():
    vocab = Vocab("abcdé ")
    ids, missing = encode_in(vocab, "dé cab")
    assert missing == [] and ids.tolist() == vocab.encode("dé cab")
    ids, missing = encode_in(vocab, "zabx✓")
    assert missing == ["x", "z", "✓"] and len(ids) == 0


def test_the_last_fraction_is_held_out():
    text = "abcdefghij" * 100
    corpus = build_corpus(Text(text, "t"), 0.1, 10)
    assert len(corpus.train) == 900 and len(corpus.val) == 100
    assert corpus.vocab.decode(corpus.val.tolist()) == text[900:]


def test_streams_match_the_drawn_layout():
    """The layout drawn in charrnn/batches.py's docstring."""
    text = "abcdefghijklmnopqrstuvwx"
    vocab = Vocab(text)
    streams = make_streams(torch.tensor(vocab.encode(text)), batch_size=4, seq_len=2)
    assert streams.windows_per_epoch == 2
    x0, y0 = streams.window(0)
    x1, _ = streams.window(1)
    rows = [vocab.decode(r) for r in torch.cat([x0, x1], 1).tolist()]
    assert rows == ["abcd", "fghi", "klmn", "pqrs"]
    assert [vocab.decode(r) for r in y0.tolist()] == ["bc", "gh", "lm", "qr"]
    assert x0.dtype == torch.int64


def test_shards_take_disjoint_rows_of_one_global_layout():
    ids = torch.arange(1000)
    whole = make_streams(ids, batch_size=8, seq_len=10)
    parts = [make_streams(ids, 4, 10, shard=s, num_shards=2) for s in range(2)]
    torch.testing.assert_close(torch.cat([p.inputs for p in parts]), whole.inputs)
    # What each process copies to its device: its contiguous span, laid out alone.
    for s, part in enumerate(parts):
        alone = make_streams(shard_span(ids, 4, s, 2), 4, 10)
        assert torch.equal(alone.inputs, part.inputs) and torch.equal(alone.targets, part.targets)
    assert len(shard_span(ids, 4, 1, 2)) == 4 * (999 // 8) + 1  # not the whole text


def test_a_head_c_cut_character_at_the_end_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("naïve café".encode()[:-1])  # 'é' is two bytes: keep one
    text = read_text(str(path))
    assert text.text == "naïve caf" and "dropped" in text.warnings[0]


def test_invalid_bytes_in_the_middle_name_the_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(CorpusError, match=r"offset 6.*--encoding"):
        read_text(str(path))
    assert read_text(str(path), "latin-1").text == "hello ÿ world"


def test_resuming_needs_the_same_vocabulary():
    with pytest.raises(CorpusError, match="new: 'z'"):
        build_corpus(Text("abcz" * 50, "t"), 0.1, 10, vocab=Vocab("abc"))
