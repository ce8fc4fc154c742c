"""Would an exponential moving average of the weights validate better than the weights?

    python bench/weight_average.py                 # the defaults, 3,000 steps (~7 min here)
    python bench/weight_average.py --steps 1000 --option dropout=0.1

Trains Tiny Shakespeare with charrnn.train (one thread), keeping EMA copies of the weights
at several decays beside the run (updated every step, from the weights before that step's
update: taken where the loop clips the gradients), then scores the held-out last 10% of
the text with the run's last weights and with each average: several decays from one run,
to choose one for `charrnn train --ema DECAY` (which keeps one average, ramped up over the
first steps, and validates and saves it; bench/levers.py compares it with seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import charrnn  # noqa: E402
import charrnn.training.loop as loop  # noqa: E402

CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
DECAYS = (0.99, 0.995, 0.998, 0.999)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--option", action="append", default=[], help="NAME=VALUE, e.g. dropout=0.1"
    )
    args = parser.parse_args()
    options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}
    averages: dict[float, list[torch.Tensor]] = {}
    clip = loop.clip_gradients

    def clip_and_average(params: list[torch.Tensor], max_norm: float) -> float:
        with torch.no_grad():
            for decay in DECAYS:
                if decay not in averages:
                    averages[decay] = [p.detach().clone() for p in params]
                for a, p in zip(averages[decay], params, strict=True):
                    a.mul_(decay).add_(p.detach(), alpha=1 - decay)
        return clip(params, max_norm)

    loop.clip_gradients = clip_and_average
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    held_out = text[int(len(text) * 0.9) :]
    with tempfile.TemporaryDirectory() as out:
        charrnn.train(CORPUS, out=out, force=True, threads=1, max_steps=args.steps,
                      eval_every=args.steps, sample_length=0, device="cpu", **options)  # fmt: skip
        last = os.path.join(out, "last.pt")
        print(f"last weights: {charrnn.load(last).score(held_out):.4f} nats/char")
        for decay in DECAYS:
            model = charrnn.load(last)
            params = [p for p in model.module.parameters() if p.requires_grad]
            with torch.no_grad():
                for p, a in zip(params, averages[decay], strict=True):
                    p.copy_(a)
            print(f"EMA, decay {decay}: {model.score(held_out):.4f} nats/char")


if __name__ == "__main__":
    main()
