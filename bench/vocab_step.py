"""One training step of the default model (LSTM 2 x 256, batch 24, window 64, bf16) at
V = 65, 2,000 and 6,000, one-hot against embedding input, without train()'s data path or
evaluations: the bare forward, cross-entropy, backward, clipping and Adam step, interleaved
over 5 rounds (chars/s, medians; ratios are medians of per-round ratios).

    OMP_NUM_THREADS=1 python bench/vocab_step.py
    OMP_NUM_THREADS=1 python bench/vocab_step.py --loss   # the loss alone, two ways

--loss times the loss and its backward alone on (24 x 64, V) bf16 logits, the step's
F.cross_entropy(logits.float()) against charrnn/loss.py's blocked computation, in
milliseconds of this thread's CPU time (medians of 5 blocks of 5 calls, interleaved).
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


def loss_ms(vocab_size: int, blocked: bool) -> float:
    from charrnn.loss import cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B * T, vocab_size, generator=gen).bfloat16().requires_grad_()
    y = torch.randint(0, vocab_size, (B * T,), generator=gen)
    t0 = time.thread_time()
    for _ in range(5):
        loss = cross_entropy(logits, y) if blocked else F.cross_entropy(logits.float(), y)
        loss.backward()
        logits.grad = None
    return (time.thread_time() - t0) / 5 * 1000


def loss_main() -> None:
    print("| V | F.cross_entropy(logits.float()) ms | charrnn/loss.py ms | ratio |")
    print("|---|---|---|---|")
    for v in (65, 2000, 6000):
        runs = {False: [], True: []}
        for _ in range(5):
            for blocked in (False, True):
                runs[blocked].append(loss_ms(v, blocked))
        old, new = statistics.median(runs[False]), statistics.median(runs[True])
        print(f"| {v:,} | {old:.2f} | {new:.2f} | {old / new:.2f}x |")


def main() -> None:
    if "--loss" in sys.argv[1:]:
        loss_main()
        return
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
