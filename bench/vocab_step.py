"""One training step of the default model (LSTM 2 x 256, batch 24, window 64, bf16) at
V = 65, 2,000 and 6,000, one-hot against embedding input, without train()'s data path or
evaluations: the bare forward, cross-entropy, backward, clipping and Adam step, interleaved
over 5 rounds (chars/s, medians; ratios are medians of per-round ratios).

    OMP_NUM_THREADS=1 python bench/vocab_step.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.config import ModelConfig
from charrnn.device import autocast
from charrnn.model import CharRNN

B, T, H = 24, 64, 256


def block(vocab_size: int, input: str, steps: int = 4) -> float:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab_size, hidden_size=H, input=input, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab_size, (B, T))
    y = torch.randint(0, vocab_size, (B, T))
    hidden = None
    for i in range(steps + 1):
        if i == 1:  # the first step pays one-off costs
            t0 = time.perf_counter()
        with autocast(torch.device("cpu"), "bf16"):
            logits, hidden = model(x, hidden)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hidden = tuple(h.detach() for h in hidden)
    return steps * B * T / (time.perf_counter() - t0)


def main() -> None:
    keys = [(v, i) for v in (65, 2000, 6000) for i in ("onehot", "embedding")]
    runs: dict[tuple[int, str], list[float]] = {k: [] for k in keys}
    for _ in range(5):
        for k in keys:
            runs[k].append(block(*k))

    def ratio(a, b):
        return statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True))

    print("| V | one-hot chars/s | embedding chars/s | embedding / one-hot | "
          "one-hot / TS one-hot | embedding / TS embedding | embedding / TS one-hot |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for v in (65, 2000, 6000):
        one, emb = (v, "onehot"), (v, "embedding")
        print(
            f"| {v:,} | {statistics.median(runs[one]):,.0f} | {statistics.median(runs[emb]):,.0f} "
            f"| {ratio(emb, one):.2f}x | {ratio(one, (65, 'onehot')):.2f}x "
            f"| {ratio(emb, (65, 'embedding')):.2f}x | {ratio(emb, (65, 'onehot')):.2f}x |"
        )


if __name__ == "__main__":
    main()
