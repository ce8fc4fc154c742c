"""Where one sampled character's time goes at V = 6,000 (the default model there: LSTM
2 x 256 with the embedding input), charrnn's CPU sampler against the naive loop.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python bench/sample_parts.py

Microseconds of this thread's CPU time per character (time.thread_time, so a busy
neighbour's share of the core is not counted), the median of 5 blocks of 500 calls each.
Also the float32 bytes of weights each part reads per character, and the rate that
implies: a part that reads megabytes per call at the same rate as the others is limited
by memory, not by the arithmetic or by Python.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.config import ModelConfig
from charrnn.model import CharRNN
from charrnn.sample import NumpyStepper, draw

V, H = 6000, 256


def per_call_us(fn, calls: int = 500, blocks: int = 5) -> float:
    times = []
    for _ in range(blocks):
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        times.append((time.thread_time() - t0) / calls * 1e6)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig("lstm", V, H, 2, input="embedding")).eval()
    stepper = NumpyStepper(model, 1)
    ids = np.array([1])
    logits = stepper.step(ids)
    uniform = np.random.default_rng(0).random(1)
    top = stepper.state(1)  # (1, H)
    below = stepper.xh[1]  # (1, 2H)
    mb = 2**20
    rows = [
        ("charrnn: one step (2 layers + output layer)", lambda: stepper.step(ids),
         (12 * H * H + H * V) * 4),
        ("  output layer h @ W_hy^T + b (H x V)", lambda: top @ stepper.w_out_t + stepper.b_out,
         H * V * 4),
        ("  layer 0 h @ W_hh^T (H x 4H)", lambda: top @ stepper.w_hh_t[0], 4 * H * H * 4),
        ("  layer 1 [x, h] @ [W_ih; W_hh]^T (2H x 4H)", lambda: below @ stepper.w_cat_t[1],
         8 * H * H * 4),
        ("charrnn: draw (T = 0.8: scale, softmax, inverse CDF)",
         lambda: draw(logits, 0.8, None, None, uniform), 0),
    ]  # fmt: skip
    x = torch.zeros(1, 1, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        out, hidden = model.rnn(model.embed(x), None)
        z = model.head(out[:, -1])
        rows += [
            ("naive: nn.LSTM call, one step", lambda: model.rnn(model.embed(x), hidden),
             (4 * H * 128 + 12 * H * H) * 4),
            ("naive: nn.Linear output layer", lambda: model.head(out[:, -1]), H * V * 4),
            ("naive: softmax + torch.multinomial",
             lambda: torch.multinomial(F.softmax(z / 0.8, dim=-1), 1, generator=gen), 0),
        ]  # fmt: skip
        print("| part | us per character | weights read | GB/s |\n|---|---|---|---|")
        for what, fn, nbytes in rows:
            us = per_call_us(fn)
            rate = f"{nbytes / us / 1e3:.1f}" if nbytes else "-"
            size = f"{nbytes / mb:.1f} MB" if nbytes else "-"
            print(f"| {what} | {us:,.0f} | {size} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
