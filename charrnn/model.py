"""The char-RNN: characters -> stacked LSTM / tanh RNN / GRU -> logits.

With ``input="onehot"`` the model is exactly the lecture notes' (min-char-rnn, CS231n):
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

With ``input="embedding"`` (ModelConfig.input; the default "auto" picks it: it trained
better at every vocabulary size measured) x_t
first goes through a learned embedding E (D x V, stored transposed as ``embed.weight``,
(V, D)), so W_xh = W_ih E: the same equations with W_xh factored into two matrices of rank
at most D. E x_t is again a column lookup (row x_t of ``embed.weight``), and the first
layer's weight_ih_l0 is then D wide instead of V. A one-hot input of a 6,000-character
vocabulary costs 6,000 x 4H multiply-adds per character forward and again in the weight
gradient; the factored form costs D x 4H.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

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
        if config.input == "embedding":
            self.embed: nn.Embedding | None = nn.Embedding(config.vocab_size, config.embedding_size)
            input_size = config.embedding_size
        elif config.input == "onehot":
            self.embed = None
            input_size = config.vocab_size
        else:
            raise ValueError(f"ModelConfig.input must be resolved, not {config.input!r}")
        self.rnn = _CELLS[config.model](
            input_size=input_size,
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
        x = self.inputs(idx)  # (B, T, D) or (B, T, V)
        if self.training and self.config.embed_dropout > 0:
            x = x * self._kept_chars(idx)
        out, hidden = self.recur(x, hidden)  # (B, T, H)
        logits = self.head(self._output_dropout(out))  # (B, T, V)
        return logits, hidden

    def _kept_chars(self, idx: torch.Tensor) -> torch.Tensor:
        """Embedding dropout (Gal & Ghahramani 2016, as in AWD-LSTM): each character of the
        vocabulary is kept or dropped for the whole window, so the model cannot lean on one
        character's vector; kept ones are scaled by 1/(1-p). idx (B, T) -> (B, T, 1)."""
        p = self.config.embed_dropout
        keep = torch.full((self.config.vocab_size,), 1 - p, device=idx.device)  # (V,)
        scale = torch.bernoulli(keep) / (1 - p)  # (V,)
        return scale[idx].unsqueeze(-1).to(self.head.weight.dtype)

    def _output_dropout(self, out: torch.Tensor) -> torch.Tensor:
        """Dropout before the output layer. Locked (variational, Gal & Ghahramani 2016): one
        mask per stream (B, 1, H), the same units dropped at every step of the window, the
        way a recurrent net's errors compound over time; otherwise torch's, new each step."""
        p = self.config.dropout
        if not (self.config.locked_dropout and self.training and p > 0):
            return self.drop(out)
        keep = torch.full((out.shape[0], 1, out.shape[2]), 1 - p, device=out.device)  # (B, 1, H)
        return out * (torch.bernoulli(keep) / (1 - p)).to(out.dtype)

    def recur(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """The recurrent layers over x (B, T, input width) -> (B, T, H) and the new state.

        With weight_drop, while training, each W_hh is used with a random fraction of its
        entries zeroed (DropConnect; the rest scaled up to keep the expected sum): the
        same dropped connections at every time step of the window, so it regularises the
        recurrence itself without the fused kernel losing its speed (AWD-LSTM, Merity et al.
        2017). The parameters themselves are never changed.
        """
        p = self.config.weight_drop
        if not (self.training and p > 0):
            return self.rnn(x, hidden)
        names = [f"weight_hh_l{k}" for k in range(self.config.num_layers)]
        dropped = {name: F.dropout(getattr(self.rnn, name), p) for name in names}
        return functional_call(self.rnn, dropped, (x, hidden))

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """What the first layer reads for ids idx (...): x_t one-hot (..., V), or E x_t
        (..., D), the column of E that x_t picks."""
        if self.embed is not None:
            return self.embed(idx)
        return F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Hidden:
        cfg = self.config
        zeros = torch.zeros(cfg.num_layers, batch_size, cfg.hidden_size, device=device)
        return (zeros, zeros.clone()) if cfg.model == "lstm" else zeros

    def input_weight(self) -> torch.Tensor:
        """W_xh of the equations, (G*H, V): weight_ih_l0 itself for one-hot input, the
        product W_ih E for an embedding."""
        w_ih = self.rnn.weight_ih_l0
        return w_ih if self.embed is None else w_ih @ self.embed.weight.T

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # rows of W_ih / W_hh per hidden unit


def parameter_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict CharRNN(config) has, name -> shape, in registration order, without
    building it (so a checkpoint's claims can be checked against its weights before anything
    is allocated)."""
    gh, h, v = GATES[config.model] * config.hidden_size, config.hidden_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {}
    width = v
    if config.input == "embedding":
        shapes["embed.weight"] = (v, config.embedding_size)  # E^T
        width = config.embedding_size
    for k in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (gh, width if k == 0 else h)
        shapes[f"rnn.weight_hh_l{k}"] = (gh, h)
        shapes[f"rnn.bias_ih_l{k}"] = (gh,)
        shapes[f"rnn.bias_hh_l{k}"] = (gh,)
    shapes["head.weight"] = (v, h)
    shapes["head.bias"] = (v,)
    return shapes


def tensor_count(config: ModelConfig) -> int:
    """len(parameter_shapes(config)) in O(1): four per layer, two for the head, and E."""
    return 4 * config.num_layers + 2 + (config.input == "embedding")


def parameter_count(config: ModelConfig) -> int:
    """The number of parameters of CharRNN(config), in O(1) whatever the sizes: W_ih, W_hh
    and two biases per layer (the first layer's W_ih is V wide, or D after an embedding E
    of V x D), and the output layer."""
    gh, h, v = GATES[config.model] * config.hidden_size, config.hidden_size, config.vocab_size
    embedded = config.input == "embedding"
    width = config.embedding_size if embedded else v
    first = gh * (width + h + 2) + (v * config.embedding_size if embedded else 0)
    upper = (config.num_layers - 1) * gh * (2 * h + 2)
    return first + upper + v * (h + 1)


def detach_hidden(hidden: Hidden, dtype: torch.dtype | None = None) -> Hidden:
    """Cut the graph at a window boundary. Without this, backward would run through every
    window since the start of the epoch: memory and time would grow with each step.

    With `dtype` (the weights'), the state is also carried in it: under bf16 autocast
    oneDNN's LSTM (and the tanh RNN) return their state in bf16, which a window run in fp32
    cannot take. bf16 widens to float32 exactly, and the next window's bf16 products narrow
    it back exactly, so a bf16 run computes the same either way, and a resumed run carries
    what an uninterrupted one does."""
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    carried = tuple(h.detach().to(dtype or h.dtype) for h in parts)
    return carried if isinstance(hidden, tuple) else carried[0]


def hidden_to_list(hidden: Hidden | None) -> list[torch.Tensor] | None:
    """The state as the checkpoint stores it: CPU tensors in float32, whatever precision
    made them, so that any machine can continue from it."""
    if hidden is None:
        return None
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return [h.detach().to("cpu", torch.float32).clone() for h in parts]


def hidden_from_list(
    parts: list[torch.Tensor] | None, device: torch.device, dtype: torch.dtype = torch.float32
) -> Hidden | None:
    """The stored state on `device`, in the weights' `dtype`: checkpoints written before
    hidden_to_list widened it hold bf16 on machines that trained in bf16."""
    if parts is None:
        return None
    moved = [p.to(device, dtype) for p in parts]
    return tuple(moved) if len(moved) == 2 else moved[0]
