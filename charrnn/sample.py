"""Generating text: feed the seed, then draw one character at a time.

Sampling is latency-bound: each character needs the whole stack of cells evaluated for a
batch of one. Calling ``nn.LSTM`` once per character pays torch's per-call overhead
dozens of times per character, so on the CPU a *stepper* runs the cell equations
directly in numpy on weights extracted once (same equations, same float32 weights; a
test checks its logits against the model's). On other devices the stepper calls the
model itself, one step at a time.

Randomness comes only from an explicit ``numpy.random.Generator``: the same
``random_seed`` gives the same text, and temperature 0 (argmax) ignores it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .config import SampleConfig
from .errors import UsageError
from .model import CharRNN, Hidden
from .vocab import Vocab, describe_chars


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # In place: the stepper owns `x` (a slice of this step's gate pre-activations).
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


class NumpyStepper:
    """One recurrent step at a time for S parallel streams, in float32 numpy."""

    def __init__(self, model: CharRNN, num_streams: int):
        cfg = model.config
        self.kind = cfg.model
        self.hidden_size = h = cfg.hidden_size
        self.num_layers = cfg.num_layers
        self.num_streams = num_streams
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.kind]

        def weight(name: str) -> np.ndarray:
            return getattr(model.rnn, name).detach().float().cpu().numpy().astype(np.float32)

        # torch stores LSTM gates as rows [i; f; g; o]; reorder to [i; f; o; g] so the three
        # sigmoid gates are one contiguous slice.
        order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h] if self.kind == "lstm" else None

        def rows(w: np.ndarray) -> np.ndarray:
            return w[order] if order is not None else w

        self.w_ih_t, self.w_hh_t, self.b_ih, self.b_hh = [], [], [], []
        for layer in range(self.num_layers):
            self.w_ih_t.append(np.ascontiguousarray(rows(weight(f"weight_ih_l{layer}")).T))
            self.w_hh_t.append(np.ascontiguousarray(rows(weight(f"weight_hh_l{layer}")).T))
            self.b_ih.append(rows(weight(f"bias_ih_l{layer}")))
            self.b_hh.append(rows(weight(f"bias_hh_l{layer}")))
        # A one-hot x_t times W_ih is one row of W_ih^T: the first layer's input term is a
        # table lookup. For LSTM/RNN both biases fold into that table too.
        self.input_table = self.w_ih_t[0] + self.b_ih[0]  # (V, G*H)
        if self.kind != "gru":
            self.input_table = self.input_table + self.b_hh[0]
            # Upper layers: one matmul of [h_below, h] against [W_ih; W_hh]^T.
            self.w_cat_t = [None] + [
                np.ascontiguousarray(np.concatenate([self.w_ih_t[i], self.w_hh_t[i]], axis=0))
                for i in range(1, self.num_layers)
            ]
            self.b_sum = [self.b_ih[i] + self.b_hh[i] for i in range(self.num_layers)]
        self.w_out_t = np.ascontiguousarray(
            model.head.weight.detach().float().cpu().numpy().T
        )  # (H, V)
        self.b_out = model.head.bias.detach().float().cpu().numpy()
        self.gate_width = gates * h
        self.reset()

    def reset(self) -> None:
        shape = (self.num_layers, self.num_streams, self.hidden_size)
        self.h = np.zeros(shape, dtype=np.float32)
        self.c = np.zeros(shape, dtype=np.float32) if self.kind == "lstm" else None

    def step(self, ids: np.ndarray) -> np.ndarray:
        """ids (S,) -> logits (S, V) for the next character; advances the state."""
        h_size = self.hidden_size
        below = None
        for layer in range(self.num_layers):
            h_prev = self.h[layer]  # (S, H)
            if self.kind == "gru":
                gi = self.input_table[ids] if layer == 0 else below @ self.w_ih_t[layer]
                if layer > 0:
                    gi += self.b_ih[layer]
                gh = h_prev @ self.w_hh_t[layer] + self.b_hh[layer]  # (S, 3H)
                rz = _sigmoid(gi[:, : 2 * h_size] + gh[:, : 2 * h_size])
                r, z = rz[:, :h_size], rz[:, h_size:]
                n = np.tanh(gi[:, 2 * h_size :] + r * gh[:, 2 * h_size :])
                h_new = n + z * (h_prev - n)  # (1 - z) * n + z * h
            else:
                if layer == 0:
                    gates = self.input_table[ids] + h_prev @ self.w_hh_t[0]  # (S, G*H)
                else:
                    xh = np.concatenate([below, h_prev], axis=1)  # (S, 2H)
                    gates = xh @ self.w_cat_t[layer]
                    gates += self.b_sum[layer]
                if self.kind == "rnn":
                    h_new = np.tanh(gates)
                else:
                    ifo = _sigmoid(gates[:, : 3 * h_size])
                    g = np.tanh(gates[:, 3 * h_size :])
                    c = self.c[layer]
                    c *= ifo[:, h_size : 2 * h_size]  # f ⊙ c_{t-1}
                    c += ifo[:, :h_size] * g  # + i ⊙ g
                    h_new = ifo[:, 2 * h_size :] * np.tanh(c)  # o ⊙ tanh(c_t)
            self.h[layer] = h_new
            below = h_new
        return below @ self.w_out_t + self.b_out  # (S, V)


class TorchStepper:
    """The model itself, one character per call: for GPUs, where numpy cannot run."""

    def __init__(self, model: CharRNN, num_streams: int, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        self.num_streams = num_streams
        self.hidden: Hidden | None = None

    def reset(self) -> None:
        self.hidden = None

    @torch.inference_mode()
    def step(self, ids: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)[:, None]  # (S, 1)
        logits, self.hidden = self.model(x, self.hidden)  # (S, 1, V)
        return logits[:, -1].float().cpu().numpy()


def make_stepper(
    model: CharRNN, num_streams: int, device: torch.device
) -> NumpyStepper | TorchStepper:
    if device.type == "cpu":
        return NumpyStepper(model, num_streams)
    return TorchStepper(model, num_streams, device)


def draw(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """logits (S, V) -> one id per row, from softmax(logits / temperature) restricted to the
    top-k ids and/or the smallest set of ids whose probability reaches top_p."""
    if temperature == 0:
        return logits.argmax(axis=1)
    z = logits.astype(np.float64) / temperature  # (S, V)
    vocab_size = z.shape[1]
    if top_k is not None and top_k < vocab_size:
        kth = np.partition(z, vocab_size - top_k, axis=1)[:, vocab_size - top_k, None]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=1)
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the better ids
        drop_sorted = before >= top_p  # the best id always stays (before = 0)
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        p = np.where(drop, 0.0, p)
    cumulative = np.cumsum(p, axis=1)  # (S, V)
    u = rng.random(len(p))[:, None] * cumulative[:, -1:]
    ids = (cumulative <= u).sum(axis=1)
    return np.minimum(ids, vocab_size - 1)


def check_seed(seed: str, vocab: Vocab) -> list[int]:
    if not seed:
        raise UsageError("--seed must not be empty: give at least one character to start from")
    missing = vocab.missing(seed)
    if missing:
        raise UsageError(
            f"--seed has characters the model never saw: {describe_chars(missing)}; "
            "use characters from the training text (`charrnn info` lists them)"
        )
    return [vocab.index[c] for c in seed]


def generate(
    model: CharRNN,
    vocab: Vocab,
    seed: str,
    config: SampleConfig,
    device: torch.device | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield (sample number, text) in output order.

    All `config.num_samples` streams are generated together (one batched step per
    character); sample 0 is yielded character by character as it is generated, the others
    whole once they are done. Each sample starts with the seed. The hidden state carries
    through the whole sample: the seed's characters first, then each drawn character.
    """
    seed_ids = check_seed(seed, vocab)
    device = device or torch.device("cpu")
    num = config.num_samples
    stepper = make_stepper(model, num, device)
    rng = np.random.default_rng(config.random_seed)
    chars = vocab.chars
    yield 0, seed
    logits = None
    for i in seed_ids:
        logits = stepper.step(np.full(num, i, dtype=np.int64))
    drawn = np.empty((num, config.length), dtype=np.int64)
    for t in range(config.length):
        ids = draw(logits, config.temperature, config.top_k, config.top_p, rng)
        drawn[:, t] = ids
        yield 0, chars[ids[0]]
        if t + 1 < config.length:
            logits = stepper.step(ids)
    for s in range(1, num):
        yield s, seed + "".join(chars[i] for i in drawn[s])
