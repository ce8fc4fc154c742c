"""What the units of a trained model track: record every state on a text, correlate.

This is the experiment of Karpathy, Johnson & Fei-Fei (2015), "Visualizing and
Understanding Recurrent Networks": run the model over a text from a zero state, keep
every unit's value after each character, and look for units that follow something
about the text, such as whether we are inside a quotation. For an LSTM the record holds
h and c and the four gates of each layer, in torch's order and names:

    i, f, g, o = σ(·), σ(·), tanh(·), σ(·)   of   W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    c_t = f ⊙ c_{t-1} + i ⊙ g          h_t = o ⊙ tanh(c_t)

(GRU: r, z, n and h; vanilla RNN: h.) The equations run in numpy from the model's own
weights, a chunk of the text at a time, layer by layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

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


def _layer_weights(model: CharRNN, k: int) -> tuple[np.ndarray, ...]:
    """Layer k's (W_ih^T, W_hh^T, b_ih, b_hh) as float32 numpy, torch's gate order; for
    layer 0, W_xh^T (V, G*H): with an embedding that is (W_ih E)^T, so x_t still picks a
    row."""
    rnn = model.rnn
    w_ih = model.input_weight() if k == 0 else getattr(rnn, f"weight_ih_l{k}")
    w_hh, b_ih, b_hh = (getattr(rnn, f"{n}_l{k}") for n in ("weight_hh", "bias_ih", "bias_hh"))
    w_ih, w_hh, b_ih, b_hh = (t.detach().float().cpu().numpy() for t in (w_ih, w_hh, b_ih, b_hh))
    return np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih, b_hh


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z), without overflow in exp


def _run_layer(kind: str, pre_x: np.ndarray, w_hh_t, b_hh, h, c) -> dict[str, np.ndarray]:
    """One layer over a chunk: pre_x (T, G*H) = W_ih x_t + b_ih for every t at once; only
    the W_hh h_{t-1} part is sequential. Returns each state (T, H) float32; h and c are
    updated in place (the state carried to the next chunk)."""
    steps, hs = len(pre_x), len(h)
    names = STATES[kind]
    out = {n: np.empty((steps, hs), np.float32) for n in names}
    for t in range(steps):
        gh = h @ w_hh_t + b_hh  # (G*H,)
        if kind == "lstm":
            z = pre_x[t] + gh
            i, f, o = _sigmoid(z[:hs]), _sigmoid(z[hs : 2 * hs]), _sigmoid(z[3 * hs :])
            g = np.tanh(z[2 * hs : 3 * hs])
            c[:] = f * c + i * g  # the additive cell path
            h[:] = o * np.tanh(c)
            out["c"][t], out["i"][t], out["f"][t], out["g"][t], out["o"][t] = c, i, f, g, o
        elif kind == "gru":
            gx = pre_x[t]
            r = _sigmoid(gx[:hs] + gh[:hs])
            z = _sigmoid(gx[hs : 2 * hs] + gh[hs : 2 * hs])
            n = np.tanh(gx[2 * hs :] + r * gh[2 * hs :])
            h[:] = (1.0 - z) * n + z * h
            out["r"][t], out["z"][t], out["n"][t] = r, z, n
        else:
            h[:] = np.tanh(pre_x[t] + gh)
        out["h"][t] = h
    return out


@torch.no_grad()
def record(
    model: CharRNN,
    ids: torch.Tensor,
    text: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> Recording:
    """Run `model` over `ids` (T,) from a zero state; keep every state after each char.

    The recurrence runs in numpy, one step at a time: for a batch of one, torch's
    per-call overhead would dominate (see charrnn/sample.py); a test checks the result
    against the model's own forward pass."""
    cfg = model.config
    kind, hs, num = cfg.model, cfg.hidden_size, len(ids)
    names = STATES[kind]
    states = {(k, s): np.empty((num, hs), np.float16) for k in range(cfg.num_layers) for s in names}
    weights = [_layer_weights(model, k) for k in range(cfg.num_layers)]
    # Each text starts from a zero state; h and c carry across chunks.
    h = [np.zeros(hs, np.float32) for _ in range(cfg.num_layers)]
    c = [np.zeros(hs, np.float32) for _ in range(cfg.num_layers)]
    ids_np = np.asarray(ids, dtype=np.int64)
    for start in range(0, num, CHUNK):
        chunk = ids_np[start : start + CHUNK]
        below = None
        for k, (w_ih_t, w_hh_t, b_ih, b_hh) in enumerate(weights):
            # One-hot x_t times W_xh is a row of W_xh^T: layer 0 looks its inputs up.
            pre_x = (w_ih_t[chunk] if k == 0 else below @ w_ih_t) + b_ih  # (T, G*H)
            values = _run_layer(kind, pre_x, w_hh_t, b_hh, h[k], c[k])
            for s in names:
                states[(k, s)][start : start + len(chunk)] = values[s]
            below = values["h"]  # the next layer's input (no dropout: evaluation)
        if on_progress is not None:
            on_progress(start + len(chunk), num)
    return Recording(kind, text[:num], cfg.num_layers, hs, states)


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
