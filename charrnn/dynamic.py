"""Dynamic evaluation (Krause et al., 2018): the model adapts to the text it is scoring.

The text is cut into segments of `segment_len` characters, read in order by one stream:

    segment:   s_1       s_2       s_3      ...
    score:     θ_0       θ_1       θ_2           (each segment scored by the weights before it)
    learn:       └─▶ θ_1   └─▶ θ_2   └─▶ θ_3     (then one gradient step on that segment)

Segment i's characters are scored first, with weights that have only ever seen segments
before it; the step on s_i comes after its loss is recorded. That order is the whole
honesty of the method: a step taken before scoring would let the model peek at what it is
about to predict (tests/test_dynamic.py shows such a leak scoring random characters below
ln V, which no honest predictor can). The hidden state is carried from segment to segment
(detached, as in training's truncated BPTT), so each character is still predicted from
all those before it.

The step (`rms`, the default) divides each gradient by a running root-mean-square of
that weight's gradients on the segments seen so far (RMSprop with Adam's bias correction,
no momentum), and pulls every weight back toward the trained θ_0 by a fraction `decay`:

    v_i  = β v_{i-1} + (1 - β) g_i²              g_i = ∇ mean loss of s_i at θ_{i-1}
    θ_i  = θ_{i-1} - η g_i / (sqrt(v_i / (1 - β^i)) + ε) + λ (θ_0 - θ_{i-1})

Krause et al. take v from gradients on the training text instead (and scale λ per weight
by it); that needs the training text at evaluation time, and measured no better here
(docs/dynamic-evaluation.md), so `reference_ms` offers it to the benchmark only. `sgd`
is the paper's plain rule: θ_i = θ_{i-1} - η g_i + λ (θ_0 - θ_{i-1}).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import _bad, _plain_fields, _positive
from .errors import UsageError
from .model import CharRNN, Hidden, detach_hidden

RULES = ("rms", "sgd")


@dataclass(frozen=True)
class DynamicConfig:
    """How `eval --dynamic` adapts; the defaults were tuned on held-out Tiny Shakespeare
    (bench/dynamic_eval.py)."""

    lr: float = 3e-4  # η: the step size (for rms, roughly each weight's change per step)
    decay: float = 1e-3  # λ: the fraction of the way back to the trained weights per step
    segment_len: int = 50  # characters scored between two steps (Krause et al.: 50)
    rule: str = "rms"  # "rms" (normalised steps) or "sgd" (plain gradient steps)
    beta: float = 0.999  # β: how slowly rms's running mean square of gradients forgets

    def __post_init__(self) -> None:
        _plain_fields(self)
        _positive("--dynamic-segment", self.segment_len)
        for flag, value in (("--dynamic-lr", self.lr), ("--dynamic-decay", self.decay)):
            if not math.isfinite(value) or value < 0:
                raise _bad(flag, f"{flag} must be a finite number >= 0 (got {value})")
        if self.decay > 1:
            raise _bad(
                "--dynamic-decay",
                f"--dynamic-decay is a fraction of the way back per step: at most 1 (got "
                f"{self.decay})",
            )
        if self.rule not in RULES:
            raise _bad("rule", f"unknown rule {self.rule!r}: choose one of {', '.join(RULES)}")
        if not 0.0 <= self.beta < 1.0:
            raise _bad("beta", f"beta must be in [0, 1) (got {self.beta})")


def as_dynamic_config(dynamic: object) -> DynamicConfig | None:
    """`score(dynamic=...)`'s argument as a config: True is the defaults, False none."""
    if isinstance(dynamic, DynamicConfig):
        return dynamic
    if type(dynamic) is bool:
        return DynamicConfig() if dynamic else None
    raise UsageError(
        f"dynamic= must be True, False or a charrnn.DynamicConfig (got {dynamic!r})", "dynamic"
    )


EPS = 1e-8  # ε: keeps a weight whose gradients were all zero from dividing by zero


class Adapter:
    """The weights' steps away from θ_0 (the weights it was made with) and back."""

    def __init__(
        self,
        model: CharRNN,
        config: DynamicConfig,
        reference_ms: list[torch.Tensor] | None = None,
    ):
        self.config = config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]  # θ_0
        self.mean_sq = [torch.zeros_like(p) for p in self.params]  # v
        self.steps = 0
        self.reference = reference_ms
        self.decay_scale: list[torch.Tensor] | None = None
        if reference_ms is not None:
            # Krause et al.: λ per weight in proportion to its gradients' RMS, at most 1/λ.
            rms = [m.sqrt() for m in reference_ms]
            total = sum(r.mean() for r in rms)
            limit = 1.0 / config.decay if config.decay > 0 else math.inf
            self.decay_scale = [(r / total).clamp(max=limit) for r in rms]

    @torch.no_grad()
    def step(self) -> None:
        """One step from the gradients in .grad (then cleared)."""
        c = self.config
        self.steps += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if c.rule == "rms":
            if self.reference is not None:
                denom = [m.sqrt().add_(EPS) for m in self.reference]
            else:
                torch._foreach_mul_(self.mean_sq, c.beta)
                torch._foreach_addcmul_(self.mean_sq, grads, grads, value=1 - c.beta)
                correction = 1 - c.beta**self.steps
                denom = torch._foreach_div(self.mean_sq, correction)
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, EPS)
            grads = torch._foreach_div(grads, denom)
        pull = torch._foreach_sub(self.start, self.params)  # θ_0 - θ
        if self.decay_scale is not None:
            torch._foreach_mul_(pull, self.decay_scale)
        torch._foreach_add_(self.params, grads, alpha=-c.lr)
        torch._foreach_add_(self.params, pull, alpha=c.decay)
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def restore(self) -> None:
        """Put θ_0 back: the model leaves as it came."""
        for p, p0 in zip(self.params, self.start, strict=True):
            p.copy_(p0)


def segments(ids: torch.Tensor, segment_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) of each segment in order: predict ids[1:] from what precedes."""
    for start in range(0, len(ids) - 1, segment_len):
        end = min(len(ids) - 1, start + segment_len)
        yield ids[start:end], ids[start + 1 : end + 1]


def adapting(
    model: CharRNN,
    ids: torch.Tensor,
    config: DynamicConfig,
    device: torch.device,
    reference_ms: list[torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """Each segment's per-character cross-entropy (nats), (T,) float64, under dynamic
    evaluation: scored, then learned from. The model's weights and mode are restored when
    the iteration ends (or is closed), whatever happens."""
    was_training = model.training
    model.eval()  # no dropout: the weights that score are the weights that are adapted
    adapter = Adapter(model, config, reference_ms)
    hidden: Hidden | None = None
    try:
        # cuDNN's RNN runs backward only in training mode; torch's own kernels do not care.
        with torch.backends.cudnn.flags(enabled=False), torch.enable_grad():
            for x, y in segments(ids, config.segment_len):
                x = x.view(1, -1).to(device).long()  # (1, T)
                y = y.to(device).long()  # (T,)
                logits, hidden = model(x, hidden)  # (1, T, V)
                loss = F.cross_entropy(logits[0].float(), y, reduction="none")  # (T,)
                yield loss.detach().double().cpu()  # scored: only now may it learn
                if config.lr > 0 or config.decay > 0:
                    loss.mean().backward()
                    adapter.step()
                hidden = detach_hidden(hidden)
    finally:
        adapter.restore()
        model.train(was_training)


def segment_losses(
    model: CharRNN,
    ids: torch.Tensor,
    config: DynamicConfig,
    device: torch.device,
    reference_ms: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Every predicted character's loss under dynamic evaluation, (len(ids) - 1,)."""
    losses = list(adapting(model, ids, config, device, reference_ms))
    return torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)


def evaluate_dynamic(
    model: CharRNN,
    ids: torch.Tensor,
    config: DynamicConfig,
    device: torch.device,
    reference_ms: list[torch.Tensor] | None = None,
) -> float:
    """Mean cross-entropy (nats/char) of predicting ids[1:] under dynamic evaluation,
    holding one segment's losses at a time."""
    total = sum(loss.sum().item() for loss in adapting(model, ids, config, device, reference_ms))
    return total / (len(ids) - 1)


def gradient_mean_squares(
    model: CharRNN, ids: torch.Tensor, segment_len: int, device: torch.device
) -> list[torch.Tensor]:
    """Krause et al.'s MS_g: each weight's mean squared gradient of a segment's mean loss,
    over consecutive segments of `ids` (the training text), state carried, no steps."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    count = 0
    hidden: Hidden | None = None
    try:
        with torch.backends.cudnn.flags(enabled=False), torch.enable_grad():
            for x, y in segments(ids, segment_len):
                logits, hidden = model(x.view(1, -1).to(device).long(), hidden)  # (1, T, V)
                F.cross_entropy(logits[0].float(), y.to(device).long()).backward()
                with torch.no_grad():
                    for t, p in zip(total, params, strict=True):
                        t.addcmul_(p.grad, p.grad)
                        p.grad = None
                count += 1
                hidden = detach_hidden(hidden)
    finally:
        model.train(was_training)
    return [t / max(1, count) for t in total]
