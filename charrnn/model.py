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
