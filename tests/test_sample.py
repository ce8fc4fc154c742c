"""Sampling: the fast stepper is the model, and the draws obey their options."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.config import ModelConfig, SampleConfig
from charrnn.errors import UsageError
from charrnn.model import CharRNN
from charrnn.sample import NumpyStepper, TorchStepper, draw, generate
from charrnn.vocab import Vocab

VOCAB = Vocab("abcdefgh \n")


def model_of(kind: str, layers: int = 2, input: str = "onehot") -> CharRNN:
    torch.manual_seed(0)
    m = CharRNN(
        ModelConfig(
            model=kind,
            vocab_size=len(VOCAB),
            hidden_size=16,
            num_layers=layers,
            input=input,
            embedding_size=6,
        )
    )
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    return m.eval()


def text_of(model, seed="a", **kw) -> str:
    return "".join(t for i, t in generate(model, VOCAB, seed, SampleConfig(**kw)) if i == 0)


@pytest.mark.parametrize("input", ["onehot", "embedding"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_numpy_stepper_matches_the_model_step_by_step(kind, layers, input):
    model = model_of(kind, layers, input)
    ids = torch.randint(0, len(VOCAB), (3, 25), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, _ = model(ids)  # (S, T, V): the whole sequence in one call
    stepper = NumpyStepper(model, num_streams=3)
    got = np.stack([stepper.step(ids[:, t].numpy()) for t in range(ids.shape[1])], axis=1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    torch_stepper = TorchStepper(model, 3, torch.device("cpu"))
    got = np.stack([torch_stepper.step(ids[:, t].numpy()) for t in range(ids.shape[1])], axis=1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_same_random_seed_same_text_and_other_seeds_differ():
    model = model_of("lstm")
    a = text_of(model, length=200, random_seed=5)
    assert a == text_of(model, length=200, random_seed=5)
    assert a != text_of(model, length=200, random_seed=6)


def test_temperature_zero_is_argmax_and_ignores_the_seed():
    model = model_of("lstm")
    a = text_of(model, length=100, temperature=0, random_seed=1)
    assert a == text_of(model, length=100, temperature=0, random_seed=2)
    # ...and it is the argmax of the model's own logits at each step
    ids = torch.tensor([VOCAB.encode(a)])
    with torch.no_grad():
        logits, _ = model(ids)
    assert VOCAB.decode(logits[0, :-1].argmax(-1).tolist()) == a[1:]


def test_top_k_draws_only_from_the_k_best():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    best3 = np.argsort(-logits, axis=1)[:, :3]
    seen = [set() for _ in range(4)]
    for _ in range(300):
        ids = draw(logits, 1.5, 3, None, rng.random(4))
        for row, i in enumerate(ids):
            assert i in best3[row]
            seen[row].add(int(i))
    assert all(len(s) == 3 for s in seen)  # and all k of them do occur


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    drawn = {int(draw(logits, 1.0, None, 0.75, rng.random(1))[0]) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    drawn = {int(draw(logits, 1.0, None, 0.4, rng.random(1))[0]) for _ in range(100)}
    assert drawn == {0}


def test_draws_follow_the_softmax_of_logits_over_temperature():
    logits = np.array([[0.0, np.log(3.0)]])  # p = 1/4, 3/4 at temperature 1
    rng = np.random.default_rng(0)
    n = 20000
    ones = sum(int(draw(logits, 1.0, None, None, rng.random(1))[0]) for _ in range(n))
    assert ones / n == pytest.approx(0.75, abs=0.015)
    ones = sum(int(draw(logits, 0.5, None, None, rng.random(1))[0]) for _ in range(n // 4))
    assert ones / (n // 4) == pytest.approx(0.9, abs=0.02)  # 9/(1+9): sharper at T=0.5


@pytest.mark.parametrize("num_samples", [1, 3])
def test_every_sample_has_the_exact_length_and_only_vocabulary_characters(num_samples):
    model = model_of("gru")
    config = SampleConfig(length=123, num_samples=num_samples, random_seed=0, top_k=5)
    samples = {}
    for i, t in generate(model, VOCAB, "ab", config):
        samples[i] = samples.get(i, "") + t
    assert sorted(samples) == list(range(num_samples))
    for s in samples.values():
        assert len(s) == 2 + 123 and s.startswith("ab")
        assert set(s) <= set(VOCAB.chars)


def test_the_hidden_state_carries_through_seed_and_sample(trained):
    """What follows a seed depends on all of it, not just its last character: the state
    from the seed is carried into sampling (same random draws, different seeds)."""
    model, vocab = model_from_checkpoint(load_checkpoint(os.path.join(trained, "best.pt")))
    config = SampleConfig(length=60, temperature=1.0, random_seed=3)

    def sample(seed):
        return "".join(t for i, t in generate(model, vocab, seed, config))[len(seed) :]

    assert sample("e") != sample("First Citizen:\nWe")
    assert sample("e") == sample("e")


def test_seeds_outside_the_vocabulary_are_named():
    model = model_of("lstm")
    with pytest.raises(UsageError, match="'z', 'Q'"):
        text_of(model, seed="azQ", length=5)
    with pytest.raises(UsageError, match="empty"):
        text_of(model, seed="", length=5)
