"""One recurrent step as an ONNX graph, written node by node from the weights.

The graph is the model's equations and nothing else (torch's names and gate orders; the
notes' W_xh is the first layer's W_ih, or W_ih E with an embedding):

    x    = W_ih[:, id]^T (one-hot: a row of W_ih^T)   or   E[id] W_ih^T (embedding)
    rnn:  h' = tanh(x + b_ih + h W_hh^T + b_hh)
    lstm: i, f, g, o = split(x + b_ih + h W_hh^T + b_hh)
          c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g);  h' = σ(o) ⊙ tanh(c')
    gru:  r, z, n from gi = x + b_ih and gh = h W_hh^T + b_hh:
          r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r ⊙ gh_n)
          h' = (1 - z) ⊙ n + z ⊙ h
    logits = h'_top W_hy^T + b_y

Written with onnx.helper rather than torch.onnx.export: the graph is a few dozen plain
operators (Gather, MatMul, Add, Split, Sigmoid, Tanh, Mul, Sub, Concat) that every ONNX
runtime runs, its weights are the checkpoint's own float32 numbers, nothing traces the
model (so dropout, a training-only layer, cannot leak in), and exporting needs only the
`onnx` package: torch 2.13's default exporter would also need onnxscript.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import MissingExtraError
from ..model import CharRNN
from ..vocab import Vocab

EXPORT_EXTRA = "pip install 'charrnn[export]'"
OPSET = 17  # Split takes its sizes as an input from 13 on; 17 is read by every current runtime


def require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingExtraError(
            f"exporting to ONNX needs the onnx package: {EXPORT_EXTRA}"
        ) from None
    return onnx


class _Graph:
    """Nodes and initializers, named as they are added."""

    def __init__(self, onnx: Any):
        self.onnx = onnx
        self.nodes: list[Any] = []
        self.weights: list[Any] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(self.onnx.numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str = "", **attrs) -> Any:
        self.count += 1
        base = name or f"{op_type.lower()}_{self.count}"
        outs = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs


def _weights(model: CharRNN) -> dict[str, np.ndarray]:
    return {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}


def _layer(
    g: _Graph, w: dict[str, np.ndarray], kind: str, k: int, x: str, h: str, c: str | None
) -> tuple[str, str | None]:
    """One layer's step: x is its input (B, in), or, when w holds no W_ih for it (one-hot
    layer 0), W_ih x_t itself (B, G*H); h, c (B, H). Returns h' (and c' for an LSTM)."""
    hs = w[f"rnn.weight_hh_l{k}"].shape[1]
    proj = x
    if f"rnn.weight_ih_l{k}" in w:
        w_ih_t = g.const(f"W_ih{k}_T", np.ascontiguousarray(w[f"rnn.weight_ih_l{k}"].T))
        proj = g.op("MatMul", x, w_ih_t)
    gi = g.op("Add", proj, g.const(f"b_ih{k}", w[f"rnn.bias_ih_l{k}"]))  # (B, G*H)
    w_hh_t = g.const(f"W_hh{k}_T", np.ascontiguousarray(w[f"rnn.weight_hh_l{k}"].T))
    gh = g.op("Add", g.op("MatMul", h, w_hh_t), g.const(f"b_hh{k}", w[f"rnn.bias_hh_l{k}"]))
    if kind == "rnn":
        return g.op("Tanh", g.op("Add", gi, gh)), None
    if kind == "lstm":
        sizes = g.const(f"split4_{k}", np.array([hs] * 4, np.int64))
        i, f, gg, o = g.op("Split", g.op("Add", gi, gh), sizes, outputs=4, axis=1)
        c_new = g.op(
            "Add",
            g.op("Mul", g.op("Sigmoid", f), c),
            g.op("Mul", g.op("Sigmoid", i), g.op("Tanh", gg)),
        )
        return g.op("Mul", g.op("Sigmoid", o), g.op("Tanh", c_new)), c_new
    sizes = g.const(f"split3_{k}", np.array([hs] * 3, np.int64))
    ir, iz, in_ = g.op("Split", gi, sizes, outputs=3, axis=1)
    hr, hz, hn = g.op("Split", gh, sizes, outputs=3, axis=1)
    r = g.op("Sigmoid", g.op("Add", ir, hr))
    z = g.op("Sigmoid", g.op("Add", iz, hz))
    n = g.op("Tanh", g.op("Add", in_, g.op("Mul", r, hn)))
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n))), None  # (1 - z) n + z h


def build(model: CharRNN, vocab: Vocab, metadata: dict[str, str]) -> Any:
    """The ONNX ModelProto of one step of `model` (any batch size)."""
    onnx = require_onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    cfg = model.config
    w = _weights(model)
    g = _Graph(onnx)
    if cfg.input == "embedding":
        x = g.op("Gather", g.const("E", w["embed.weight"]), "ids", axis=0)  # (B, D)
    else:  # one-hot x_t times W_ih^T is row x_t of W_ih^T: a lookup, exactly
        table = np.ascontiguousarray(w.pop("rnn.weight_ih_l0").T)  # (V, G*H)
        x = g.op("Gather", g.const("W_ih0_T", table), "ids", axis=0)  # (B, G*H)
    lstm = cfg.model == "lstm"
    h_outs, c_outs = [], []
    for k in range(cfg.num_layers):
        idx = g.const(f"layer{k}", np.array(k, np.int64))
        h = g.op("Gather", "h", idx, axis=0)  # (B, H)
        c = g.op("Gather", "c", idx, axis=0) if lstm else None
        x, c_new = _layer(g, w, cfg.model, k, x, h, c)
        axis0 = g.const(f"axis0_{k}", np.array([0], np.int64))
        h_outs.append(g.op("Unsqueeze", x, axis0))  # (1, B, H)
        if lstm:
            c_outs.append(g.op("Unsqueeze", c_new, axis0))
    g.op("Concat", *h_outs, name="h_out", axis=0)  # (L, B, H)
    if lstm:
        g.op("Concat", *c_outs, name="c_out", axis=0)
    head = g.op("MatMul", x, g.const("W_hy_T", np.ascontiguousarray(w["head.weight"].T)))
    g.op("Add", head, g.const("b_y", w["head.bias"]), name="logits")  # (B, V)

    layers, hidden, v = cfg.num_layers, cfg.hidden_size, len(vocab)
    state = ["h", "c"] if lstm else ["h"]
    inputs = [helper.make_tensor_value_info("ids", tp.INT64, ["batch"])] + [
        helper.make_tensor_value_info(s, tp.FLOAT, [layers, "batch", hidden]) for s in state
    ]
    outputs = [helper.make_tensor_value_info("logits", tp.FLOAT, ["batch", v])] + [
        helper.make_tensor_value_info(f"{s}_out", tp.FLOAT, [layers, "batch", hidden])
        for s in state
    ]
    graph = helper.make_graph(g.nodes, f"charrnn_{cfg.model}_step", inputs, outputs, g.weights)
    proto = helper.make_model(
        graph, producer_name="charrnn", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    proto.ir_version = 8  # read by onnxruntime 1.14 and later
    helper.set_model_props(proto, {"vocab": json.dumps(vocab.chars), **metadata})
    onnx.checker.check_model(proto)
    return proto


def write(proto: Any, path: str) -> None:
    require_onnx().save(proto, path)
