"""The training loss computed in cache-sized blocks is F.cross_entropy's, value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import shakespeare_head, tiny_run

import charrnn.training.loop as loop
import charrnn.training.prepare as prepare
from charrnn import loss


def reference(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1.0):
    x = logits.detach().clone().requires_grad_()
    value = F.cross_entropy(x.float(), targets)
    (scale * value).backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("vocab", [3, 65, 3000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_equal_f_cross_entropy(vocab, dtype, monkeypatch):
    # Small blocks, so that V = 3,000 takes several of them and the last is partial.
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * 3000 * 7)
    gen = torch.Generator().manual_seed(vocab)
    n = 50
    logits = (4 * torch.randn(n, vocab, generator=gen)).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=gen)
    value = loss.cross_entropy(logits, targets)
    value.backward()
    want, want_grad = reference(logits, targets)
    assert value.dtype == torch.float32 and logits.grad.dtype == dtype
    assert torch.allclose(value, want, rtol=1e-6, atol=1e-6)
    # dL/dy = (softmax(y) - onehot(target)) / N; bf16 gradients round to 8 bits.
    tol = {"rtol": 1e-5, "atol": 1e-8} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 0}
    assert torch.allclose(logits.grad.float(), want_grad.float(), **tol)


def test_a_scaled_loss_scales_the_gradient():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 30, generator=gen).requires_grad_()
    targets = torch.randint(0, 30, (20,), generator=gen)
    (3.0 * loss.cross_entropy(logits, targets)).backward()
    _, want_grad = reference(logits, targets, scale=3.0)
    assert torch.allclose(logits.grad, want_grad, rtol=1e-5, atol=1e-8)


def test_training_with_it_follows_the_f_cross_entropy_run(tmp_path, monkeypatch):
    # The same model trained two ways, blocked loss + fused Adam and F.cross_entropy + the
    # plain Adam loop, stays the same run up to float rounding.
    text = shakespeare_head(6000)
    a, _ = tiny_run(text, str(tmp_path / "a"), max_steps=30, eval_every=30)
    monkeypatch.setattr(loop, "cross_entropy", lambda y, t: F.cross_entropy(y.float(), t))
    monkeypatch.setattr(prepare, "fused_adam", lambda device: {})
    b, _ = tiny_run(text, str(tmp_path / "b"), max_steps=30, eval_every=30)
    assert a.last_val_loss == pytest.approx(b.last_val_loss, abs=1e-4)
    wa = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model_state"]
    wb = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model_state"]
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
