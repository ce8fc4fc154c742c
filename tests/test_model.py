"""The model computes the lecture notes' equations, and BPTT gives the right gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig
from charrnn.model import CharRNN, detach_hidden

V, H, L, T = 7, 5, 2, 9


INPUTS = ["onehot", "embedding"]  # every input kind charrnn ships
D = 4  # embedding width: narrower than V, so W_xh = W_ih E really is a low-rank factoring


def make(kind: str, seed: int = 0, input: str = "onehot") -> CharRNN:
    torch.manual_seed(seed)
    config = ModelConfig(
        model=kind, vocab_size=V, hidden_size=H, num_layers=L, input=input, embedding_size=D
    )
    model = CharRNN(config)
    # Spread the weights so the nonlinearities are exercised, not just their linear part.
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.8, 0.8)
    return model.double().eval()


def w_xh(model: CharRNN, layer: int) -> torch.Tensor:
    """The notes' W_xh: (G*H, V) on layer 0, where x_t is one-hot."""
    w_ih = getattr(model.rnn, f"weight_ih_l{layer}")
    if layer == 0 and model.config.input == "embedding":
        return w_ih @ model.embed.weight.T  # W_xh = W_ih E; embed.weight holds E^T, (V, D)
    return w_ih


def weights(model: CharRNN, layer: int):
    rnn = model.rnn
    return (
        w_xh(model, layer),
        getattr(rnn, f"weight_hh_l{layer}"),
        getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}"),
    )


def reference(model: CharRNN, idx: torch.Tensor) -> torch.Tensor:
    """The equations written out one step at a time in float64, from the model's weights."""
    kind = model.config.model
    h = [torch.zeros(H, dtype=torch.float64) for _ in range(L)]
    c = [torch.zeros(H, dtype=torch.float64) for _ in range(L)]
    outputs = []
    for t in range(len(idx)):
        x = torch.zeros(V, dtype=torch.float64)
        x[idx[t]] = 1.0  # one-hot x_t
        for layer in range(L):
            w_xh, w_hh, b = weights(model, layer)
            if kind == "rnn":
                h[layer] = torch.tanh(w_xh @ x + w_hh @ h[layer] + b)
            elif kind == "lstm":
                a = w_xh @ x + w_hh @ h[layer] + b
                i, f, g, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
                i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
                c[layer] = f * c[layer] + i * g
                h[layer] = o * torch.tanh(c[layer])
            else:  # gru, in torch's convention
                rnn = model.rnn
                gi = w_xh @ x + getattr(rnn, f"bias_ih_l{layer}")
                gh = getattr(rnn, f"weight_hh_l{layer}") @ h[layer] + getattr(
                    rnn, f"bias_hh_l{layer}"
                )
                r = torch.sigmoid(gi[:H] + gh[:H])
                z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
                n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
                h[layer] = (1 - z) * n + z * h[layer]
            x = h[layer]
        outputs.append(model.head.weight @ h[-1] + model.head.bias)  # y_t = W_hy h_t + b_y
    return torch.stack(outputs)


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_model_computes_the_equations(kind, input):
    model = make(kind, input=input)
    idx = torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(idx[None])
    torch.testing.assert_close(logits[0], reference(model, idx), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("input", INPUTS)
def test_one_hot_times_w_xh_is_a_column_lookup(input):
    model = make("rnn", input=input)
    x = F.one_hot(torch.tensor(3), V).double()
    torch.testing.assert_close(w_xh(model, 0) @ x, w_xh(model, 0)[:, 3])
    torch.testing.assert_close(model.input_weight(), w_xh(model, 0))


def test_an_embedding_factors_w_xh_through_d_columns():
    model = make("lstm", input="embedding")
    assert model.rnn.weight_ih_l0.shape == (4 * H, D)  # W_ih
    assert model.embed.weight.shape == (V, D)  # E^T
    assert torch.linalg.matrix_rank(model.input_weight()) <= D < V


def loss_of(model: CharRNN, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits, _ = model(idx)
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_bptt_gradients_match_numerical_gradients(kind, input):
    """min-char-rnn's gradient check: central differences in float64 agree with backprop
    through time for sampled entries of every parameter."""
    model = make(kind, seed=2, input=input)
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, V, (2, T), generator=gen)
    targets = torch.randint(0, V, (2, T), generator=gen)
    model.zero_grad()
    loss_of(model, idx, targets).backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        for flat in torch.randint(0, p.numel(), (4,), generator=gen).tolist():
            with torch.no_grad():
                old = p.view(-1)[flat].item()
                p.view(-1)[flat] = old + eps
                plus = loss_of(model, idx, targets).item()
                p.view(-1)[flat] = old - eps
                minus = loss_of(model, idx, targets).item()
                p.view(-1)[flat] = old
            numeric = (plus - minus) / (2 * eps)
            analytic = p.grad.view(-1)[flat].item()
            assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(numeric), (name, flat)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_two_windows_with_carried_state_equal_one_pass(kind):
    model = make(kind)
    idx = torch.randint(0, V, (3, 2 * T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole, _ = model(idx)
        first, hidden = model(idx[:, :T])
        second, _ = model(idx[:, T:], detach_hidden(hidden))
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


def test_detached_state_stops_gradients_at_the_window_boundary():
    model = make("lstm")
    idx = torch.randint(0, V, (2, 2 * T), generator=torch.Generator().manual_seed(5))
    targets = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(6))
    _, hidden = model(idx[:, :T])
    carried = detach_hidden(hidden)
    assert all(h.grad_fn is None and not h.requires_grad for h in carried)

    def grads(state):
        model.zero_grad()
        logits, _ = model(idx[:, T:], state)
        F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)).backward()
        return [p.grad.clone() for p in model.parameters()]

    # Gradients through the detached state equal those from the same state as a constant...
    constant = tuple(h.clone() for h in carried)
    for a, b in zip(grads(carried), grads(constant), strict=True):
        torch.testing.assert_close(a, b)
    # ...and differ from backpropagating into the first window, which the detach prevents.
    _, attached = model(idx[:, :T])
    assert any(
        not torch.allclose(a, b) for a, b in zip(grads(carried), grads(attached), strict=True)
    )


@pytest.mark.parametrize("input", INPUTS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_every_parameter_gets_a_gradient(kind, input):
    model = make(kind, input=input)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(7))
    loss_of(model, idx, idx.roll(-1, dims=1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weights_use_torch_names_for_the_checkpoint():
    config = ModelConfig(model="lstm", vocab_size=V, hidden_size=H, num_layers=2, input="onehot")
    model = CharRNN(config)
    names = set(model.state_dict())
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l1", "rnn.bias_hh_l1", "head.weight"} <= names
    assert model.rnn.weight_ih_l0.shape == (4 * H, V)  # gates i, f, g, o stacked
