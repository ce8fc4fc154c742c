"""Scoring held-out text: mean cross-entropy with the state carried along each stream,
and the bounded, evenly spaced segments a validation predicts."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..memory import EVAL_LOGITS_BYTES
from ..model import CharRNN, Hidden
from .events import StopRequest

LN2 = math.log(2.0)

# Validation streams are at least this long, so starting each from a zero state costs a
# negligible amount of context (<0.001 nats/char on Tiny Shakespeare's 111k characters).
MIN_VAL_STREAM = 16384


@torch.no_grad()
def evaluate(
    model: CharRNN,
    ids: torch.Tensor,
    device: torch.device,
    num_streams: int = 1,
    chunk_len: int = 1024,
    stop: StopRequest | None = None,
    deadline: float | None = None,
) -> float | None:
    """Mean cross-entropy (nats/char) of predicting ids[1:] from what precedes each.

    The text is cut into `num_streams` contiguous streams (1 = exactly "every character
    from all those before it"); each starts from a zero state, which is carried through
    its stream. Returns None if `stop` is set part-way or the time.perf_counter()
    `deadline` passes. `chunk_len` is an upper bound: for a large vocabulary the chunks are
    shorter (EVAL_LOGITS_BYTES), which changes nothing but the memory, since the state is
    carried across chunks.
    """
    was_training = model.training
    model.eval()
    try:
        n = len(ids) - 1
        chunk_len = eval_chunk_len(num_streams, model.config.vocab_size, chunk_len)
        stream_len = n // num_streams
        used = stream_len * num_streams
        x_all = ids[:used].view(num_streams, stream_len).to(device)  # (S, L)
        y_all = ids[1 : used + 1].view(num_streams, stream_len).to(device)  # (S, L)
        scored = _score_streams(model, x_all, y_all, chunk_len, stop, deadline)
        if scored is None:
            return None
        total = scored[0]
        tail: Hidden | None = None
        for start in range(used, n, chunk_len):  # the part that did not divide evenly
            end = min(n, start + chunk_len)
            x = ids[start:end].view(1, -1).to(device).long()
            y = ids[start + 1 : end + 1].view(1, -1).to(device).long()
            logits, tail = model(x, tail)
            total += F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            ).double()
        return total.item() / n
    finally:
        model.train(was_training)


def _score_streams(
    model: CharRNN,
    x_all: torch.Tensor,  # (S, L) inputs, one stream per row
    y_all: torch.Tensor,  # (S, L) targets
    chunk_len: int,
    stop: StopRequest | None,
    deadline: float | None = None,
    budget_s: float | None = None,
) -> tuple[torch.Tensor, int] | None:
    """Summed cross-entropy over the streams, the state carried along each, and how many
    columns were scored: all of them, or (with `budget_s`) those of the chunks begun
    within that many seconds. None if stopped or past the deadline."""
    total = torch.zeros((), dtype=torch.float64, device=x_all.device)
    hidden: Hidden | None = None
    began = time.perf_counter()
    cols = 0
    chunk_took = 0.0
    for start in range(0, x_all.shape[1], chunk_len):
        t0 = time.perf_counter()
        # A chunk that would end past the deadline is not begun (it is as long as the last).
        if stop or (deadline is not None and t0 + chunk_took > deadline):
            return None
        # Within the budget, a chunk is begun only if it can end in it (as long as the last).
        if budget_s is not None and cols and t0 + chunk_took - began > budget_s:
            break
        x = x_all[:, start : start + chunk_len].long()
        y = y_all[:, start : start + chunk_len].long()
        logits, hidden = model(x, hidden)
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).double()
        cols = start + x.shape[1]
        chunk_took = time.perf_counter() - t0
    return total, cols


def eval_chunk_len(num_streams: int, vocab_size: int, chunk_len: int = 1024) -> int:
    """The longest chunk <= chunk_len whose (S, chunk, V) float32 logits fit EVAL_LOGITS_BYTES."""
    return max(1, min(chunk_len, EVAL_LOGITS_BYTES // (4 * num_streams * vocab_size)))


def val_streams(num_chars: int) -> int:
    return max(1, min(64, num_chars // MIN_VAL_STREAM))


def val_segments(ids: torch.Tensor, max_chars: int, whole: bool = False) -> torch.Tensor | None:
    """At most `max_chars` held-out characters to predict, as evenly spaced segments.

    None when the held-out text is within the bound (it is then used whole), unless
    `whole`: then segments that cover all of it (a validation that can be cut short to fit
    a time limit, since a segment's columns can be dropped from the end). Otherwise
    (S, L + 1) rows: S = val_streams(max_chars) segments of L + 1 characters spread evenly
    from the start of `ids` to its end, each scored from a zero state carried along it,
    so a bounded evaluation sees every part of the held-out text, not only its beginning.
    Copies at most max_chars + S ids (the mapped corpus is not read beyond them).
    """
    if len(ids) - 1 <= max_chars:
        if not whole:
            return None
        max_chars = len(ids) - 1
    num = val_streams(max_chars)
    seg = max_chars // num
    last = len(ids) - seg - 1  # the latest start that leaves a whole segment
    # Integer arithmetic: float32 linspace rounds starts past `last` beyond 2**24 ids.
    starts = [i * last // max(1, num - 1) for i in range(num)]
    return torch.stack([ids[a : a + seg + 1] for a in starts])  # (S, L + 1)


@torch.no_grad()
def evaluate_segments(
    model: CharRNN,
    rows: torch.Tensor,
    device: torch.device,
    stop: StopRequest | None = None,
    deadline: float | None = None,
    budget_s: float | None = None,
) -> tuple[float, int] | None:
    """Mean cross-entropy (nats/char) of predicting rows[:, 1:] from rows[:, :-1], and the
    number of columns scored (fewer than rows.shape[1] - 1 only when `budget_s` ran out:
    the loss is then over rows[:, : cols + 1])."""
    was_training = model.training
    model.eval()
    try:
        rows = rows.to(device)
        # Chunks of at most 256 columns: fine-grained enough for the deadline and the
        # budget; fewer for a large vocabulary (EVAL_LOGITS_BYTES).
        chunk_len = eval_chunk_len(rows.shape[0], model.config.vocab_size, 256)
        scored = _score_streams(
            model, rows[:, :-1], rows[:, 1:], chunk_len, stop, deadline, budget_s
        )
        if scored is None:
            return None
        total, cols = scored
        return total.item() / (rows.shape[0] * cols), cols
    finally:
        model.train(was_training)
