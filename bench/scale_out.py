"""One process against two (torchrun's launcher, gloo) on Tiny Shakespeare, side by side.

    python bench/scale_out.py [--steps 300] [--rounds 3]

Both runs train the same model with the same total --batch-size from the same seed, with
dropout 0, so their validation losses must agree (the row shows the largest difference
at any evaluation); the chars/s rows show what the second process costs or gains on this
machine. On a 2-core machine two processes cannot be faster than one using both cores:
the CPU rows measure correctness and overhead; speed from more processes comes with more
cores or GPUs. Wall time includes starting the processes; chars/s is from the run's own
training time (`done: ... in`), read from metrics.jsonl's elapsed at the last evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
# The defaults but dropout (0: the two runs then compute the same thing) and no sample.
OPTIONS = ["--dropout", "0", "--sample-length", "0", "--device", "cpu", "--quiet"]


def one_run(
    out: str, steps: int, nproc: int, precision: str = "auto"
) -> tuple[float, float, dict[int, float]]:
    """(wall seconds, training chars/s, {step: val loss})."""
    cmd = [sys.executable, "-m", "charrnn", "train", CORPUS, "--out", out, "--force"]
    cmd += [*OPTIONS, "--max-steps", str(steps), "--eval-every", str(steps // 2)]
    cmd += ["--precision", precision]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    began = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - began
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if "val_loss" in r]  # the evaluations
    from charrnn.config import TrainConfig

    chars = steps * TrainConfig.batch_size * TrainConfig.seq_len
    return wall, chars / records[-1]["elapsed"], {r["step"]: r["val_loss"] for r in records}


def rows(
    tmp: str, steps: int = 300, rounds: int = 3, precision: str = "auto"
) -> list[tuple[str, str, str, str]]:
    runs: dict[int, list[tuple[float, float, dict[int, float]]]] = {1: [], 2: []}
    for _ in range(rounds):  # interleaved: 1, 2, 1, 2, ...
        for nproc in (1, 2):
            out = os.path.join(tmp, f"p{nproc}")
            runs[nproc].append(one_run(out, steps, nproc, precision))
    one_rate = statistics.median(r[1] for r in runs[1])
    two_rate = statistics.median(r[1] for r in runs[2])
    one_wall = statistics.median(r[0] for r in runs[1])
    two_wall = statistics.median(r[0] for r in runs[2])
    diff = max(abs(a[2][k] - b[2][k]) for a, b in zip(runs[1], runs[2], strict=True) for k in a[2])
    last = max(runs[1][0][2])
    return [
        (
            f"train {steps} steps ({precision}), 1 process vs 2 (gloo), chars/s",
            f"{one_rate:,.0f}",
            f"{two_rate:,.0f}",
            f"{two_rate / one_rate:.2f}x",
        ),
        (
            "  same, wall time with start-up (s)",
            f"{one_wall:.1f}",
            f"{two_wall:.1f}",
            f"{two_wall / one_wall:.2f}x",
        ),
        (
            f"  validation loss at step {last}, largest 1-vs-2 difference",
            f"{runs[1][0][2][last]:.4f}",
            f"{runs[2][0][2][last]:.4f}",
            f"{diff:.1e}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", help="auto (bf16 here), fp32, bf16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-dist-") as tmp:
        table = rows(tmp, args.steps, args.rounds, args.precision)
    print("\n| what | 1 process | 2 processes | ratio |\n|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
