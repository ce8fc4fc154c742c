"""How far back the gradient reaches: ||dL_t / dh_{t-k}|| for k = 0 ... K.

L_t is the loss of predicting character t+1 from h_t. Backpropagation through time
carries dL_t/dh_t back one step at a time, multiplying by the Jacobian dh_s/dh_{s-1}
each step. In a vanilla RNN that Jacobian is diag(1 - h_s²) W_hh: its norm is mostly
below 1 once trained, so the product shrinks geometrically and the gradient vanishes
within a few dozen characters (CS231n lecture 10). An LSTM also has the additive cell
path c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t: along it the factor per step is just f_t, which
the model can hold near 1, so the gradient survives much longer (Olah's "Understanding
LSTM Networks").

The cells are stepped here by hand, with torch's own weights and gate order, so every
h_s is a tensor of the graph whose gradient can be read (torch's fused nn.LSTM exposes
only the last one). h_s stands for all layers' h at step s together: the state the
model carries from one character to the next.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..model import CharRNN

DEFAULT_MAX_DISTANCE = 100
DEFAULT_POSITIONS = 64  # positions of the text the norms are averaged over
WARMUP = 50  # characters run before the K+1 steps, so the state is not a zero one


def _weights(model: CharRNN, k: int) -> tuple[torch.Tensor, ...]:
    rnn = model.rnn
    return tuple(
        getattr(rnn, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )


def _step(kind: str, x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step of one layer: the equations in charrnn/model.py, torch's gate order."""
    gi = x @ w_ih.T + b_ih  # (B, G*H)
    gh = h @ w_hh.T + b_hh  # (B, G*H)
    if kind == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()  # the additive cell path
        return o.sigmoid() * c.tanh(), c
    if kind == "gru":
        xr, xz, xn = gi.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        return (1 - z) * n + z * h, None
    return (gi + gh).tanh(), None  # h_t = tanh(W_xh x_t + W_hh h_{t-1} + b)


def gradient_norms(
    model: CharRNN, windows: torch.Tensor, targets: torch.Tensor, max_distance: int
) -> dict[str, np.ndarray]:
    """windows (B, W) ids, each read from a zero state; targets (B,) the character after
    each window. Returns {"h": (B, K+1, num_layers)}: ||dL/dh_{t-k}|| per layer, t = W-1,
    and for an LSTM also "c": ||dL/dc_{t-k}||, the gradient along the cell path."""
    cfg = model.config
    model.eval()
    batch, width = windows.shape
    if max_distance >= width:
        raise ValueError("windows must be longer than max_distance")
    zeros = torch.zeros(batch, cfg.hidden_size)
    h = [zeros] * cfg.num_layers
    c = [zeros] * cfg.num_layers
    kept: list[list[torch.Tensor]] = []  # kept[s][layer]: h of the last K+1 steps
    kept_c: list[list[torch.Tensor]] = []
    weights = [_weights(model, k) for k in range(cfg.num_layers)]
    for s in range(width):
        x = model.inputs(windows[:, s])  # (B, V) one-hot or (B, D) E x_t: W_ih sees either
        for k in range(cfg.num_layers):
            out, c[k] = _step(cfg.model, x, h[k], c[k], *weights[k])
            x = out  # the layer above reads it within this same step
            # The state carried to step s+1 is a copy of `out`, so its gradient is the
            # partial derivative with respect to the state at s: the path from this
            # layer into the layer above at step s belongs to that layer's own h_s.
            h[k] = out.clone()
            if s >= width - 1 - max_distance:
                h[k].retain_grad()  # an intermediate: keep its .grad after backward
                if c[k] is not None:
                    c[k] = c[k].clone()  # likewise: c_s as carried to step s+1
                    c[k].retain_grad()
        if s >= width - 1 - max_distance:
            kept.append(list(h))
            kept_c.append(list(c))
    logits = model.head(h[-1])  # (B, V)
    # Summed, not averaged: each row's gradient is then exactly its own dL_t/dh.
    F.cross_entropy(logits, targets, reduction="sum").backward()
    result = {"h": _norms(kept, batch, max_distance, cfg.num_layers)}
    if cfg.model == "lstm":
        result["c"] = _norms(kept_c, batch, max_distance, cfg.num_layers)
    model.zero_grad(set_to_none=True)
    return result


def _norms(kept: list[list[torch.Tensor]], batch: int, max_distance: int, layers: int):
    norms = np.zeros((batch, max_distance + 1, layers), np.float64)
    for distance in range(max_distance + 1):
        for k, state in enumerate(kept[max_distance - distance]):
            if state.grad is not None:  # None: nothing after it reads it (at t itself)
                norms[:, distance, k] = state.grad.norm(dim=1).double().numpy()
    return norms


def gradient_reach(
    model: CharRNN,
    ids: torch.Tensor,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    num_positions: int = DEFAULT_POSITIONS,
) -> dict:
    """The norm of dL_t/dh_{t-k} (all layers' h together) averaged over positions t of
    the text, for k = 0 ... max_distance; also per layer, and for an LSTM the norm of
    dL_t/dc_{t-k} (norms_cell)."""
    if max_distance < 0:
        raise UsageError(f"--max-distance must be >= 0 (got {max_distance})")
    if num_positions < 1:
        raise UsageError(f"--positions must be at least 1 (got {num_positions})")
    need = max_distance + 2  # K+1 states, and the character predicted after them
    if len(ids) < need:
        raise UsageError(
            f"the text has {len(ids)} characters; --max-distance {max_distance} needs at least "
            f"{need}: give a longer text or a smaller --max-distance"
        )
    width = min(len(ids) - 1, max_distance + 1 + WARMUP)
    last = len(ids) - 1 - width  # the last window start that leaves a target after it
    starts = np.unique(np.linspace(0, last, num_positions).round().astype(np.int64))
    windows = torch.stack([ids[s : s + width] for s in starts]).long()  # (B, W)
    targets = torch.stack([ids[s + width] for s in starts]).long()  # (B,)
    grads = gradient_norms(model, windows, targets, max_distance)
    per = grads["h"]  # (B, K+1, L)
    total = np.sqrt((per**2).sum(axis=2))  # (B, K+1): the norm over all layers' h
    extra = {}
    if "c" in grads:
        cell = np.sqrt((grads["c"] ** 2).sum(axis=2)).mean(axis=0)  # (K+1,)
        extra["norms_cell"] = [float(v) for v in cell]
    return {
        "distances": list(range(max_distance + 1)),
        "norms": [float(v) for v in total.mean(axis=0)],
        "norms_by_layer": [
            [float(v) for v in per[:, :, k].mean(axis=0)] for k in range(per.shape[2])
        ],
        **extra,
        "positions": len(starts),
        "model": model.config.model,
    }


def distance_ranges(ks: list[int], last: int) -> str:
    """Distances as short ranges: [3, 4, 5, 9] -> "k = 3..5, 9"; a tail -> "k >= 49"."""
    if len(ks) > 1 and ks == list(range(ks[0], last + 1)):
        return f"k >= {ks[0]}"
    parts = []
    for _, group in itertools.groupby(enumerate(ks), key=lambda p: p[1] - p[0]):
        run = [k for _, k in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}..{run[-1]}")
    return "k = " + ", ".join(parts)
