"""The training loss: softmax cross-entropy, with its gradient computed the notes' way.

For logits y_t (a V-vector) and the character that follows, target t:

    p = softmax(y_t),   L = -log p[target]  (mean over the window's characters)
    dL/dy_t = p - onehot(target)            (min-char-rnn: dy = np.copy(ps[t]); dy[targets[t]] -= 1)

`F.cross_entropy(logits.float(), ...)` computes the same thing through autograd, and for a
large vocabulary that is most of a training step that is not a matrix product: a float32
copy of the (N, V) logits, log_softmax kept for backward, a zero-filled (N, V) gradient
for nll_loss, log_softmax's backward and a cast back to bf16: about ten passes over
tensors of 37 MB each at V = 6,000 (batch 24 x window 64), all from memory rather than
cache. Here the gradient is computed in the same pass as the loss, a block of rows at a
time small enough to stay in cache (CHUNK_BYTES of float32), and only the (N, V) gradient
itself, in the logits' dtype, is written and kept for backward. The loss is the same
function of the same logits; only float rounding differs (tests/test_loss.py compares
both with F.cross_entropy).

On other devices (a GPU launches one kernel per operation, so many small blocks would
cost more than they save) and without gradients this is F.cross_entropy itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per block: as many as fit this many bytes of float32 logits, so that a block's
# softmax, gradient and cast all run in cache (L2 is 2 MB per core on the development CPU).
CHUNK_BYTES = 2**19


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, v = logits.shape  # (N, V), N = batch x window
        rows = max(1, CHUNK_BYTES // (4 * v))
        grad = torch.empty_like(logits)  # (N, V) dL/dy in the logits' dtype (bf16 under autocast)
        picked = torch.empty(n, dtype=torch.float32, device=logits.device)  # log p[target]
        minus_one = torch.full((rows, 1), -1.0, device=logits.device)
        for start in range(0, n, rows):
            end = min(n, start + rows)
            t = targets[start:end].unsqueeze(1)  # (r, 1)
            log_p = torch.log_softmax(logits[start:end].float(), dim=1)  # (r, V) float32
            picked[start:end] = log_p.gather(1, t).squeeze(1)
            p = log_p.exp_()  # (r, V) softmax(y)
            p.scatter_add_(1, t, minus_one[: end - start])  # p - onehot(target)
            grad[start:end] = p.mul_(1.0 / n)  # the mean's 1/N, then cast
        ctx.save_for_backward(grad)
        return -picked.sum() / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        # The loss is the root of backward, so grad_loss is 1: skip a pass over (N, V).
        if grad_loss.item() == 1.0:
            return grad, None
        return grad * grad_loss.to(grad.dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (N, V) against targets (N,) int64, a float32 scalar:
    F.cross_entropy(logits.float(), targets), computed in cache-sized blocks on the CPU."""
    if logits.device.type != "cpu" or not (torch.is_grad_enabled() and logits.requires_grad):
        return F.cross_entropy(logits.float(), targets)
    return _SoftmaxCrossEntropy.apply(logits, targets)
