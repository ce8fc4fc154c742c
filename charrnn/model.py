"""The char-RNN: one-hot characters -> stacked LSTM / tanh RNN / GRU -> logits.

The input is deliberately one-hot, the model of the lecture notes (min-char-rnn, CS231n):
x_t is a V-vector with a single 1, so W_xh @ x_t just picks one column of W_xh. An
embedding layer would compute the same thing by lookup; keeping the one-hot form means
the first layer's weight_ih *is* the W_xh of the equations, under torch's own names:

    rnn:  h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    lstm: i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)   (torch's gate order)
          c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)
          h_t = σ(o) ⊙ tanh(c_t)
    gru:  r, z, n as in torch.nn.GRU

and the output layer gives logits y_t = W_hy h_t + b_y; softmax(y_t) is the distribution
of the next character.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError("ModelConfig.vocab_size must be set from the corpus (>= 2)")
        self.config = config
        kwargs = {"nonlinearity": "tanh"} if config.model == "rnn" else {}
        self.rnn = _CELLS[config.model](
            input_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            **kwargs,
        )
        # nn.Dropout(0) would still draw a mask in training mode: skip it outright.
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(
        self, idx: torch.Tensor, hidden: Hidden | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        """idx (B, T) int64 -> logits (B, T, V) and the hidden state after the last step."""
        x = F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)  # (B, T, V)
        out, hidden = self.rnn(x, hidden)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, hidden

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Hidden:
        cfg = self.config
        zeros = torch.zeros(cfg.num_layers, batch_size, cfg.hidden_size, device=device)
        return (zeros, zeros.clone()) if cfg.model == "lstm" else zeros

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # rows of W_ih / W_hh per hidden unit
# The tensors with one slice per character, and which axis: W_xh's columns (x_t is
# one-hot), W_hy's rows and b_y. Growing the vocabulary (--init-from) grows these.
VOCAB_AXES = {"rnn.weight_ih_l0": 1, "head.weight": 0, "head.bias": 0}


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict CharRNN(config) has, name -> shape, without building it (so a
    checkpoint's claims can be checked against its weights before anything is allocated)."""
    gh, h, v = GATES[config.model] * config.hidden_size, config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {}
    for k in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (gh, v if k == 0 else h)
        shapes[f"rnn.weight_hh_l{k}"] = (gh, h)
        shapes[f"rnn.bias_ih_l{k}"] = (gh,)
        shapes[f"rnn.bias_hh_l{k}"] = (gh,)
    shapes["head.weight"] = (v, h)
    shapes["head.bias"] = (v,)
    return shapes


def parameter_count(config: ModelConfig) -> int:
    """len of all parameters of CharRNN(config), in O(1): W_ih, W_hh and two biases per
    layer (the first layer's W_ih is V wide, the others H), and the output layer."""
    gh, h, v = GATES[config.model] * config.hidden_size, config.hidden_size, config.vocab_size
    first = gh * (v + h + 2)
    upper = (config.num_layers - 1) * gh * (2 * h + 2)
    return first + upper + v * (h + 1)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at a window boundary. Without this, backward would run through every
    window since the start of the epoch: memory and time would grow with each step."""
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return hidden.detach()


def hidden_to_list(hidden: Hidden | None) -> list[torch.Tensor] | None:
    if hidden is None:
        return None
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return [h.detach().cpu().clone() for h in parts]


def hidden_from_list(parts: list[torch.Tensor] | None, device: torch.device) -> Hidden | None:
    if parts is None:
        return None
    moved = [p.to(device) for p in parts]
    return tuple(moved) if len(moved) == 2 else moved[0]
