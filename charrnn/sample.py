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
from .vocab import Vocab, describe_chars, numpy_id_dtype


class NumpyStepper:
    """One recurrent step at a time for S parallel streams, in float32 numpy.

    Two rewrites make a step cheap without changing its result:
      * x_t is one-hot, so W_ih x_t is a row of a (V, G*H) table, biases folded in (with an
        embedding E, the table is E^T W_ih^T + b: W_xh = W_ih E computed once);
      * σ(z) = (1 + tanh(z/2)) / 2, so with the sigmoid gates' rows of W and b halved once
        here, a single tanh over all gate pre-activations serves every gate.
    """

    def __init__(self, model: CharRNN, num_streams: int):
        cfg = model.config
        self.kind = cfg.model
        self.hidden_size = h = cfg.hidden_size
        self.num_layers = cfg.num_layers
        self.num_streams = num_streams

        # Rows of the stacked gate weights: LSTM [i; f; g; o] becomes [i; f; o; g] so the
        # sigmoid gates are one slice; `half` marks the rows of sigmoid gates.
        if self.kind == "lstm":
            order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
            half = np.r_[np.full(3 * h, 0.5), np.ones(h)]
        elif self.kind == "gru":  # [r; z; n]
            order = np.arange(3 * h)
            half = np.r_[np.full(2 * h, 0.5), np.ones(h)]
        else:
            order, half = np.arange(h), np.ones(h)
        half = half.astype(np.float32)

        def weight(name: str) -> np.ndarray:
            w = getattr(model.rnn, name).detach().float().cpu().numpy()[order]
            return (w * (half[:, None] if w.ndim == 2 else half)).astype(np.float32)

        w_ih_t = [np.ascontiguousarray(weight(f"weight_ih_l{k}").T) for k in range(cfg.num_layers)]
        self.w_hh_t = [
            np.ascontiguousarray(weight(f"weight_hh_l{k}").T) for k in range(cfg.num_layers)
        ]
        b_ih = [weight(f"bias_ih_l{k}") for k in range(cfg.num_layers)]
        self.b_hh = [weight(f"bias_hh_l{k}") for k in range(cfg.num_layers)]
        if model.embed is not None:
            # W_xh = W_ih E: fold E in once, so layer 0 is again a row lookup. Row v of
            # E^T W_ih^T is (W_ih E)[:, v]^T, the column a one-hot x_t = v would pick.
            e = model.embed.weight.detach().float().cpu().numpy()  # (V, D)
            w_ih_t[0] = e @ w_ih_t[0]  # (V, G*H)
        if self.kind == "gru":  # r gates W_hn h + b_hn, so the two sides stay apart
            self.table = w_ih_t[0] + b_ih[0]  # (V, 3H)
            self.w_ih_t, self.b_ih = w_ih_t, b_ih
        else:
            self.table = w_ih_t[0] + b_ih[0] + self.b_hh[0]  # (V, G*H)
            # Upper layers: one matmul of [h_below, h] against [W_ih; W_hh]^T.
            self.w_cat_t = [None] + [
                np.ascontiguousarray(np.concatenate([w_ih_t[k], self.w_hh_t[k]], axis=0))
                for k in range(1, cfg.num_layers)
            ]
            self.b_sum = [b_ih[k] + self.b_hh[k] for k in range(cfg.num_layers)]
        self.w_out_t = np.ascontiguousarray(model.head.weight.detach().float().numpy().T)  # (H, V)
        self.b_out = model.head.bias.detach().float().numpy().copy()
        self.reset()

    def reset(self) -> None:
        s, h = self.num_streams, self.hidden_size
        # xh[k] holds [input from the layer below | this layer's h] side by side, so the
        # upper layers' matmul needs no concatenation; layer 0 keeps h alone.
        self.xh = [
            np.zeros((s, h if k == 0 else 2 * h), np.float32) for k in range(self.num_layers)
        ]
        self.c = np.zeros((self.num_layers, s, h), np.float32) if self.kind == "lstm" else None

    def load_hidden(self, hidden: Hidden) -> None:
        """Start every stream from `hidden`, the model's state of one stream (batch size 1):
        h (and c) of each layer, (L, 1, H)."""
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        h = parts[0][:, 0].float().cpu().numpy()  # (L, H)
        for k in range(self.num_layers):
            self.state(k)[...] = h[k]
            if k + 1 < self.num_layers:  # the input the layer above saw last
                self.xh[k + 1][:, : self.hidden_size] = h[k]
        if self.kind == "lstm":
            self.c[...] = parts[1][:, 0].float().cpu().numpy()[:, None, :]

    def state(self, layer: int) -> np.ndarray:
        """h of `layer`, (S, H) (a view)."""
        return self.xh[layer][:, -self.hidden_size :]

    def step(self, ids: np.ndarray) -> np.ndarray:
        """ids (S,) -> logits (S, V) for the next character; advances the state."""
        hs = self.hidden_size
        for k in range(self.num_layers):
            h_prev = self.state(k)  # (S, H)
            if self.kind == "gru":
                if k == 0:
                    gi = self.table[ids]
                else:
                    gi = self.xh[k][:, :hs] @ self.w_ih_t[k]
                    gi += self.b_ih[k]
                gh = h_prev @ self.w_hh_t[k]
                gh += self.b_hh[k]  # (S, 3H)
                rz = np.tanh(gi[:, : 2 * hs] + gh[:, : 2 * hs])
                rz *= 0.5
                rz += 0.5  # r, z = σ(...)
                n = np.tanh(gi[:, 2 * hs :] + rz[:, :hs] * gh[:, 2 * hs :])
                h_new = n + rz[:, hs:] * (h_prev - n)  # (1 - z) ⊙ n + z ⊙ h
            else:
                if k == 0:
                    gates = self.table[ids]
                    gates += h_prev @ self.w_hh_t[0]  # (S, G*H)
                else:
                    gates = self.xh[k] @ self.w_cat_t[k]
                    gates += self.b_sum[k]
                np.tanh(gates, out=gates)
                if self.kind == "rnn":
                    h_new = gates  # h_t = tanh(W_xh x_t + W_hh h_{t-1} + b)
                else:
                    ifo = gates[:, : 3 * hs]
                    ifo *= 0.5
                    ifo += 0.5  # i, f, o = σ(...); g = tanh(...) is gates[:, 3H:]
                    c = self.c[k]
                    c *= ifo[:, hs : 2 * hs]  # f ⊙ c_{t-1}
                    c += ifo[:, :hs] * gates[:, 3 * hs :]  # + i ⊙ g
                    h_new = np.tanh(c)
                    h_new *= ifo[:, 2 * hs :]  # h_t = o ⊙ tanh(c_t)
            h_prev[...] = h_new
            if k + 1 < self.num_layers:
                self.xh[k + 1][:, :hs] = h_new
        return self.state(self.num_layers - 1) @ self.w_out_t + self.b_out  # (S, V)


class TorchStepper:
    """The model itself, one character per call: for GPUs, where numpy cannot run."""

    def __init__(self, model: CharRNN, num_streams: int, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        self.num_streams = num_streams
        self.hidden: Hidden | None = None

    def reset(self) -> None:
        self.hidden = None

    def load_hidden(self, hidden: Hidden) -> None:
        """Start every stream from `hidden`, the state of one stream (batch size 1)."""
        parts = hidden if isinstance(hidden, tuple) else (hidden,)
        expanded = [p.expand(-1, self.num_streams, -1).contiguous() for p in parts]
        self.hidden = tuple(expanded) if len(expanded) == 2 else expanded[0]

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


UNIFORM_BLOCK = 1024
# Below this, logits / T overflow float32 (or the draw is argmax in all but exact ties
# anyway): such a temperature means 0.
MIN_TEMPERATURE = 1e-30


def draw(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    uniform: np.ndarray,
) -> np.ndarray:
    """logits (S, V) -> one id per row, from softmax(logits / temperature) restricted to the
    top-k ids and/or the smallest set of ids whose probability reaches top_p.

    `uniform` (S,) holds one number in [0, 1) per row: the draw's only randomness.
    """
    if temperature < MIN_TEMPERATURE:  # 0, or so small that 1/T would overflow: argmax
        return logits.argmax(axis=1)
    z = logits * np.float32(1.0 / temperature)  # (S, V)
    vocab_size = z.shape[1]
    if top_k is not None and top_k < vocab_size:
        kth = np.partition(z, vocab_size - top_k, axis=1)[:, vocab_size - top_k, None]
        z[z < kth] = -np.inf
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z, out=z)  # unnormalised: the draw below scales by the total instead
    if top_p is not None and top_p < 1.0:
        p /= p.sum(axis=1, keepdims=True)
        order = np.argsort(-p, axis=1)
        sorted_p = np.take_along_axis(p, order, axis=1)
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of the better ids
        drop = np.zeros(p.shape, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=1)  # the best id always stays
        p[drop] = 0.0
    cumulative = np.cumsum(p, axis=1, dtype=np.float64)  # (S, V)
    # Inverse CDF: the first id whose cumulative mass exceeds u * total.
    ids = (cumulative <= (uniform * cumulative[:, -1])[:, None]).sum(axis=1)
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


def check_stop(stop: str | None, vocab: Vocab) -> None:
    """A stop text the model can never generate would never end a sample (with --length 0,
    never end the command): refused, as a seed with unknown characters is."""
    missing = vocab.missing(stop) if stop else []
    if missing:
        raise UsageError(
            f"--stop-at has characters the model never generates: {describe_chars(missing)}, "
            "so it would never stop; use characters from the training text "
            "(`charrnn info` lists them)"
        )


# Seeds longer than this are fed through the model in one batched pass (torch's fused
# kernels), not one character at a time: a paragraph-long prompt costs milliseconds.
FAST_SEED = 256
SEED_CHUNK = 4096


def feed_seed(
    model: CharRNN, stepper: NumpyStepper | TorchStepper, seed_ids: list[int], fast: bool = True
) -> np.ndarray:
    """Run the seed through the model; returns the logits (S, V) for the first drawn
    character. Every stream gets the same state: the one the whole seed leaves."""
    num = stepper.num_streams
    if fast and len(seed_ids) > FAST_SEED:
        ids = torch.tensor(seed_ids[:-1], dtype=torch.long)[None]  # (1, T)
        hidden = None
        device = next(model.parameters()).device
        with torch.inference_mode():
            for start in range(0, ids.shape[1], SEED_CHUNK):
                _, hidden = model(ids[:, start : start + SEED_CHUNK].to(device), hidden)
        stepper.load_hidden(hidden)
        return stepper.step(np.full(num, seed_ids[-1], dtype=np.int64))
    logits = None
    for i in seed_ids:
        logits = stepper.step(np.full(num, i, dtype=np.int64))
    return logits


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
    `config.length` 0 means no end (one sample only); with `config.stop_at`, a sample ends
    right after that text appears in what it generated.
    """
    seed_ids = check_seed(seed, vocab)
    check_stop(config.stop_at, vocab)
    device = device or torch.device("cpu")
    num = config.num_samples
    stepper = make_stepper(model, num, device)
    rng = np.random.default_rng(config.random_seed)
    chars = vocab.chars
    stop = config.stop_at or ""
    yield 0, seed
    logits = feed_seed(model, stepper, seed_ids)
    # Sample 0 streams out as it is drawn; only the others wait, in the vocabulary's compact
    # id type.
    held = np.empty((num - 1, config.length), dtype=numpy_id_dtype(len(chars)))
    found = np.zeros(num - 1, dtype=bool)  # held samples whose text holds `stop`
    searched = 0  # held columns already searched for `stop`
    recent = ""  # the end of sample 0, as long as `stop`
    streaming = True  # sample 0 still going
    t = 0
    while config.length == 0 or t < config.length:
        if t % UNIFORM_BLOCK == 0:  # one call to the generator per block, not per character
            if stop and not streaming and found.all():
                break  # every sample has ended at its stop text
            if stop and num > 1 and t > searched:
                found |= _holds(held, searched, t, stop, chars)
                searched = t
            uniforms = rng.random((UNIFORM_BLOCK, num))
        ids = draw(
            logits, config.temperature, config.top_k, config.top_p, uniforms[t % UNIFORM_BLOCK]
        )
        if num > 1:
            held[:, t] = ids[1:]
        if streaming:
            char = chars[ids[0]]
            yield 0, char
            if stop:
                recent = (recent + char)[-len(stop) :]
                streaming = recent != stop
                if not streaming and num == 1:
                    return
        t += 1
        if config.length == 0 or t < config.length:
            logits = stepper.step(ids)
    for s in range(1, num):
        text = "".join(chars[i] for i in held[s - 1, :t])
        if stop and stop in text:
            text = text[: text.index(stop) + len(stop)]
        yield s, seed + text


def _holds(held: np.ndarray, start: int, end: int, stop: str, chars: list[str]) -> np.ndarray:
    """Which held samples have `stop` in their columns [start, end), counting a match
    that begins up to len(stop) - 1 columns before `start`."""
    first = max(0, start - len(stop) + 1)
    return np.array([stop in "".join(chars[i] for i in row[first:end]) for row in held], dtype=bool)
