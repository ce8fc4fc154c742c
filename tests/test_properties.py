"""Property tests over the text path: any text encodes, trains and samples.

Hypothesis draws texts from the whole of Unicode (Korean, emoji, combining marks, control
characters), leaving out only the surrogates, which no UTF-8 file can hold.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from charrnn.batches import min_train_chars
from charrnn.checkpoint import load_checkpoint
from charrnn.config import ModelConfig, SampleConfig, TrainConfig
from charrnn.corpus import Text, build_corpus, read_text
from charrnn.errors import CorpusError
from charrnn.model import CharRNN
from charrnn.rundir import RunDir
from charrnn.sample import generate
from charrnn.training import train
from charrnn.vocab import Vocab, encode_array, id_dtype

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point but a surrogate, with extra weight on a few scripts and emoji.
SPICE = "한국어 텍스트😀🎉👩‍💻é\u0301\n\t\r\x00"
chars = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(SPICE))
texts = st.text(chars)


def _distinct(n: int, start: int) -> str:
    return "".join(chr(start + i) for i in range(n))


# ------------------------------------------------------------------------ encoding


@FAST
@given(texts)
@example("")
@example("hello, world")
@example(_distinct(300, 0xAC00))  # > 256 characters: int16 ids
@example(_distinct(33000, 0x10000))  # > 32768 characters: int32 ids
def test_encode_decode_round_trips(text):
    vocab, ids = encode_array(text)
    assert vocab.chars == sorted(set(text))
    codes = [ord(c) for c in vocab.chars]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)  # sorted by code point
    assert ids.dtype == id_dtype(len(vocab))
    assert ids.shape == (len(text),)
    assert vocab.decode(ids.tolist()) == text
    if len(text) < 1000:  # the vectorised encoder agrees with the plain one
        assert ids.tolist() == vocab.encode(text)


@FAST
@given(texts)
def test_utf8_file_reads_back_exactly(text):
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        path.write_bytes(data)
        if not text:
            with pytest.raises(CorpusError, match="empty"):
                read_text(str(path))
        elif "\x00" in text:
            with pytest.raises(CorpusError, match="NUL byte at offset"):
                read_text(str(path))
        else:
            read = read_text(str(path))
            assert read.text == text and read.warnings == []
            if ord(text[-1]) > 0x7F:  # cut the last character in half: kept, minus it
                path.write_bytes(data[:-1])
                if len(text) == 1:
                    with pytest.raises(CorpusError, match="empty"):
                        read_text(str(path))
                else:
                    cut = read_text(str(path))
                    assert cut.text == text[:-1]
                    assert len(cut.warnings) == 1


@FAST
@given(
    batch_size=st.integers(1, 64),
    seq_len=st.integers(1, 256),
    val_fraction=st.floats(0.001, 0.95),
)
def test_too_short_message_names_a_length_that_is_enough(batch_size, seq_len, val_fraction):
    need = min_train_chars(batch_size, seq_len)
    with pytest.raises(CorpusError) as info:
        build_corpus(Text("ab", "tiny"), val_fraction, need)
    enough = int(re.search(r"give at least (\d+) characters", str(info.value)).group(1))
    corpus = build_corpus(Text(("ab" * enough)[:enough], "enough"), val_fraction, need)
    assert len(corpus.train) >= need and len(corpus.val) >= 2


# ------------------------------------------------------------------------ training


trainable = st.text(chars, min_size=20, max_size=300).filter(lambda t: len(set(t)) >= 2)


@FAST
@given(text=trainable, model=st.sampled_from(["lstm", "gru", "rnn"]))
def test_any_text_trains_one_step(text, model):
    config = TrainConfig(
        batch_size=2, seq_len=4, max_steps=1, eval_every=1, precision="fp32", device="cpu"
    )
    corpus = build_corpus(
        Text(text, "<hypothesis>"),
        config.val_fraction,
        min_train_chars(config.batch_size, config.seq_len),
    )
    model_config = ModelConfig(
        model=model, hidden_size=8, num_layers=1, vocab_size=len(corpus.vocab)
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir(tmp)
        run_dir.prepare(resume=False, force=False)
        result = train(model_config, config, corpus, run_dir)
        saved = load_checkpoint(str(Path(tmp) / "last.pt"))
    assert result.step == 1
    assert result.last_val_loss is not None and np.isfinite(result.last_val_loss)
    assert all(torch.isfinite(v).all() for v in saved["model_state"].values())
    assert saved["vocab"] == sorted(set(text))
    assert saved["corpus"]["first_char"] == text[0]


# ------------------------------------------------------------------------ sampling

VOCAB = Vocab("abc xyz\n한국😀é\u0301")


def _model(kind: str) -> CharRNN:
    with torch.random.fork_rng(devices=[]):  # leave the global generator as it was
        torch.manual_seed(0)
        config = ModelConfig(model=kind, hidden_size=8, num_layers=2, vocab_size=len(VOCAB))
        return CharRNN(config).eval()


MODELS = {kind: _model(kind) for kind in ("lstm", "gru", "rnn")}


@FAST
@given(
    model=st.sampled_from(sorted(MODELS)),
    seed=st.text(st.sampled_from(VOCAB.chars), min_size=1, max_size=20),
    length=st.integers(1, 60),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 5.0]),
    top_k=st.none() | st.integers(1, len(VOCAB) + 3),
    top_p=st.none() | st.floats(0.01, 1.0),
    num_samples=st.integers(1, 3),
    random_seed=st.integers(0, 2**32 - 1),
    stop_at=st.none() | st.text(st.sampled_from(VOCAB.chars), min_size=1, max_size=2),
)
def test_any_seed_from_the_vocabulary_samples(
    model, seed, length, temperature, top_k, top_p, num_samples, random_seed, stop_at
):
    config = SampleConfig(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
        random_seed=random_seed,
        stop_at=stop_at,
    )

    def run() -> list[str]:
        samples = [""] * num_samples
        for index, piece in generate(MODELS[model], VOCAB, seed, config):
            samples[index] += piece
        return samples

    samples = run()
    for sample in samples:
        assert sample.startswith(seed)
        generated = sample[len(seed) :]
        if stop_at and stop_at in generated:  # ends right after its first stop text
            assert generated.index(stop_at) + len(stop_at) == len(generated) <= length
        else:
            assert len(generated) == length
        assert set(sample) <= set(VOCAB.chars)
    assert run() == samples  # the same random_seed gives the same text
