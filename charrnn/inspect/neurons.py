"""What the units of a trained model track: record every state on a text, correlate.

This is the experiment of Karpathy, Johnson & Fei-Fei (2015), "Visualizing and
Understanding Recurrent Networks": run the model over a text from a zero state, keep
every unit's value after each character, and look for units that follow something
about the text, such as whether we are inside a quotation. For an LSTM the record holds
h and c and the four gates of each layer, in torch's order and names:

    i, f, g, o = σ(·), σ(·), tanh(·), σ(·)   of   W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    c_t = f ⊙ c_{t-1} + i ⊙ g          h_t = o ⊙ tanh(c_t)

(GRU: r, z, n and h; vanilla RNN: h.) Each layer runs as torch's own single-layer module
over a chunk of the text, which gives h exactly; the gates are then recomputed for the
whole chunk at once from the layer's input and h_{t-1}, and c follows from them with
the elementwise recurrence above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..model import CharRNN

FEATURES = ("in_quotes", "in_parens", "line_position", "in_word")
# States kept per layer, by model kind; the sigmoid gates are the ones that saturate.
STATES = {"lstm": ("h", "c", "i", "f", "g", "o"), "gru": ("h", "r", "z", "n"), "rnn": ("h",)}
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}
# The record of a long text is bounded: float16 values, at most this many bytes.
DEFAULT_MEMORY_MB = 1024
CHUNK = 2048  # characters per pass: bounds the float32 temporaries
OPEN, CLOSE = "([{", ")]}"


@dataclass
class Recording:
    kind: str  # "lstm" | "gru" | "rnn"
    text: str  # the characters recorded (the first ones of the text, under the cap)
    num_layers: int
    hidden_size: int
    states: dict[tuple[int, str], np.ndarray]  # (layer, state) -> (T, H) float16

    def unit(self, layer: int, state: str, index: int) -> np.ndarray:
        """One unit's value after each recorded character, (T,) float32."""
        return self.states[(layer, state)][:, index].astype(np.float32)


def bytes_per_char(model: CharRNN) -> int:
    cfg = model.config
    return 2 * cfg.num_layers * len(STATES[cfg.model]) * cfg.hidden_size  # float16


def max_chars(model: CharRNN, memory_mb: float) -> int:
    """How many characters a record may hold within `memory_mb`."""
    return max(1, int(memory_mb * 2**20) // bytes_per_char(model))


def _single_layers(model: CharRNN) -> list[nn.Module]:
    """Each layer of the model's stack as its own one-layer torch module, same weights."""
    cfg = model.config
    cls = type(model.rnn)
    layers = []
    for k in range(cfg.num_layers):
        input_size = cfg.vocab_size if k == 0 else cfg.hidden_size
        kwargs = {"nonlinearity": "tanh"} if cfg.model == "rnn" else {}
        layer = cls(input_size, cfg.hidden_size, num_layers=1, batch_first=True, **kwargs)
        state = {
            f"{name}_l0": getattr(model.rnn, f"{name}_l{k}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        layer.load_state_dict(state)
        layers.append(layer.eval())
    return layers


@torch.no_grad()
def record(
    model: CharRNN,
    ids: torch.Tensor,
    text: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Recording:
    """Run `model` over `ids` (T,) from a zero state; keep every state after each char."""
    cfg = model.config
    kind, hs, num = cfg.model, cfg.hidden_size, len(ids)
    names = STATES[kind]
    states = {(k, s): np.empty((num, hs), np.float16) for k in range(cfg.num_layers) for s in names}
    layers = _single_layers(model)
    carried: list = [None] * cfg.num_layers  # each layer's state at the chunk boundary
    for start in range(0, num, CHUNK):
        x_ids = ids[start : start + CHUNK].long()
        t = len(x_ids)
        x = torch.nn.functional.one_hot(x_ids, cfg.vocab_size).float()  # (T, V)
        for k, layer in enumerate(layers):
            out, new = layer(x[None], _batched(carried[k]))  # out (1, T, H)
            h = out[0]  # (T, H)
            if carried[k] is None:
                h0 = h.new_zeros(1, hs)  # each text starts from a zero state
            else:
                h0 = carried[k][0] if kind == "lstm" else carried[k]  # (1, H)
            h_prev = torch.cat([h0, h[:-1]])  # (T, H): the state each step starts from
            pre_x = x @ layer.weight_ih_l0.T + layer.bias_ih_l0  # (T, G*H)
            pre_h = h_prev @ layer.weight_hh_l0.T + layer.bias_hh_l0  # (T, G*H)
            values = {"h": h}
            if kind == "lstm":
                i, f, g, o = (pre_x + pre_h).chunk(4, dim=1)  # torch's gate order
                i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                c0 = carried[k][1] if carried[k] is not None else h.new_zeros(1, hs)
                values.update(c=_cell_states(i, f, g, c0[0]), i=i, f=f, g=g, o=o)
            elif kind == "gru":
                xr, xz, xn = pre_x.chunk(3, dim=1)
                hr, hz, hn = pre_h.chunk(3, dim=1)
                r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
                values.update(r=r, z=z, n=(xn + r * hn).tanh())
            for s in names:
                states[(k, s)][start : start + t] = values[s].numpy()
            carried[k] = _unbatched(new)
            x = h  # the next layer's input (no dropout: the model is evaluated)
        if on_progress is not None:
            on_progress(start + t, num)
    return Recording(kind, text[:num], cfg.num_layers, hs, states)


def _cell_states(i: torch.Tensor, f: torch.Tensor, g: torch.Tensor, c0: torch.Tensor):
    """c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t for the chunk, (T, H): the LSTM's additive path."""
    ig = (i * g).numpy()  # (T, H)
    fn = f.numpy()
    c = np.empty_like(ig)
    prev = c0.numpy()
    for t in range(len(ig)):
        prev = fn[t] * prev + ig[t]
        c[t] = prev
    return torch.from_numpy(c)


def _batched(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.unsqueeze(1) for s in state)
    return state.unsqueeze(1)


def _unbatched(state):
    # torch returns (num_layers=1, batch=1, H); keep (1, H) per part.
    if isinstance(state, tuple):
        return tuple(s[:, 0] for s in state)
    return state[:, 0]


# ---------------------------------------------------------------------- features


def text_features(text: str) -> dict[str, np.ndarray]:
    """Per character, what is true *after* reading it (as the state after it is):
    in_quotes   between an opening '"' and its closing one (the opening quote counts)
    in_parens   inside (), [] or {} (any depth; the opening bracket counts)
    line_position  characters since the last newline (the newline itself is 0)
    in_word     the character is a letter (inside a run of letters)
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (T,)
    index = np.arange(len(codes))
    in_quotes = np.cumsum(codes == ord('"')) % 2
    depth, in_parens = 0, np.zeros(len(codes), np.float32)
    for t, ch in enumerate(text):
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth = max(0, depth - 1)
        in_parens[t] = depth > 0
    last_newline = np.maximum.accumulate(np.where(codes == ord("\n"), index, -1))
    line_position = index - last_newline
    line_position[codes == ord("\n")] = 0
    in_word = np.fromiter((ch.isalpha() for ch in text), bool, len(text))
    return {
        "in_quotes": in_quotes.astype(np.float32),
        "in_parens": in_parens,
        "line_position": line_position.astype(np.float32),
        "in_word": in_word.astype(np.float32),
    }


def _standardized(values: np.ndarray) -> np.ndarray:
    """(T, ...) -> zero mean, unit variance per column; constant columns become 0."""
    values = values.astype(np.float32)
    centred = values - values.mean(axis=0)
    std = centred.std(axis=0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-8)


def correlations(rec: Recording, features: dict[str, np.ndarray]) -> dict[str, dict]:
    """Pearson correlation of every unit with every feature:
    {feature: {(layer, state): (H,) float32}}; empty for a feature that is constant on
    this text (no quotes in it, say), where a correlation means nothing."""
    names = [n for n in features if np.ptp(features[n][: len(rec.text)]) > 0]
    f = _standardized(np.stack([features[n][: len(rec.text)] for n in names], axis=1))  # (T, F)
    out: dict[str, dict] = {n: {} for n in features}
    if not names:
        return out
    for key, values in rec.states.items():
        corr = _standardized(values).T @ f / len(f)  # (H, F)
        for j, n in enumerate(names):
            out[n][key] = corr[:, j]
    return out


def rank_units(corr: dict[str, dict], top: int = 5) -> dict[str, list[dict]]:
    """Per feature, the `top` units with the largest |correlation|, best first."""
    ranked = {}
    for feature, blocks in corr.items():
        rows = [
            (abs(float(c)), layer, state, unit, float(c))
            for (layer, state), values in blocks.items()
            for unit, c in enumerate(values)
        ]
        rows.sort(key=lambda r: -r[0])
        ranked[feature] = [
            {"layer": layer, "state": state, "unit": unit, "corr": round(c, 4)}
            for _, layer, state, unit, c in rows[:top]
        ]
    return ranked


def gate_saturation(rec: Recording) -> list[dict[str, dict[str, list[float]]]]:
    """Per layer, per sigmoid gate: for each unit, the fraction of characters at which it
    is below 0.1 (left-saturated, nearly closed) and above 0.9 (right-saturated, open).
    The paper's figure plots one against the other, a point per gate unit."""
    layers = []
    for k in range(rec.num_layers):
        gates = {}
        for gate in SIGMOID_GATES[rec.kind]:
            values = rec.states[(k, gate)]
            gates[gate] = {
                "left": np.round((values < 0.1).mean(axis=0), 4).tolist(),
                "right": np.round((values > 0.9).mean(axis=0), 4).tolist(),
            }
        layers.append(gates)
    return layers
