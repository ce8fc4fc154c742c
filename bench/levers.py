"""Does a regulariser earn its place? Side-by-side runs of the same steps, with and without.

    python bench/levers.py                                     # Tiny Shakespeare, 2,000 steps
    python bench/levers.py --text korean.txt --steps 1500 --seeds 1,2
    python bench/levers.py --lever "embed_dropout=0.2" --lever "locked_dropout=true"
    python bench/levers.py --lever 'lr_schedule="linear",lr_min_ratio=0'   # two options at once
    python bench/levers.py --steps 4400 --seeds 1337,7,42 --lever plain --lever ema=0.999

Each run is `charrnn.train(TEXT, max_steps=STEPS, threads=1, ...)` with the model charrnn
chooses for Tiny Shakespeare in 5 minutes here (1 x 512, dropout 0.1; --size and --dropout
to change it) plus one lever; `--jobs` runs go at once, one thread each. Counted in steps,
not seconds, so a busy machine changes how long it takes, not what it learns. Prints one
line per run and a table of best validation loss (the text's last 10%) by lever: mean over
seeds, and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
LEVERS = ("plain", "embed_dropout=0.1", "locked_dropout=true")


def one(text: str, steps: int, size: str, dropout: float, lever: str, seed: int) -> dict:
    sys.path.insert(0, ROOT)
    import charrnn

    hidden, layers = (int(n) for n in size.split("x"))
    options = {} if lever == "plain" else dict(_option(part) for part in lever.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        result = charrnn.train(text, out=tmp, force=True, max_steps=steps, threads=1,
                               eval_every=max(1, steps // 4), sample_length=0, random_seed=seed,
                               hidden_size=hidden, num_layers=layers, dropout=dropout,
                               **options)  # fmt: skip
    return {"text": os.path.basename(text), "steps": steps, "size": size, "dropout": dropout,
            "lever": lever, "seed": seed, "best_val": result.best_val_loss}  # fmt: skip


def _option(lever: str) -> tuple[str, object]:
    name, value = lever.split("=", 1)
    return name, json.loads(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", default=CORPUS)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--size", default="512x1")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lever", action="append",
                   help="NAME=VALUE (json), several joined by commas; 'plain': none")  # fmt: skip
    p.add_argument("--seeds", default="1337")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", help="append each run's row here (jsonl)")
    p.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        text, steps, size, dropout, lever, seed = args.one
        print(json.dumps(one(text, int(steps), size, float(dropout), lever, int(seed))))
        return
    levers = args.lever or list(LEVERS)
    jobs = [(lever, int(seed)) for seed in args.seeds.split(",") for lever in levers]
    rows = []
    for start in range(0, len(jobs), args.jobs):
        procs = [_start(args, lever, seed) for lever, seed in jobs[start : start + args.jobs]]
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode:
                sys.exit(f"a run failed (exit {proc.returncode})")
            row = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    _table(args, levers, rows)


def _start(args: argparse.Namespace, lever: str, seed: int) -> subprocess.Popen:
    command = [sys.executable, __file__, "--one", args.text, str(args.steps), args.size,
               str(args.dropout), lever, str(seed)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _table(args: argparse.Namespace, levers: list[str], rows: list[dict]) -> None:
    name = os.path.basename(args.text)
    print(f"\n{name}, {args.size} dropout {args.dropout}, {args.steps} steps")
    print("| lever | best val (mean) | runs |")
    print("|---|---|---|")
    for lever in levers:
        vals = [r["best_val"] for r in rows if r["lever"] == lever]
        runs = ", ".join(f"{v:.4f}" for v in vals)
        print(f"| {lever} | {statistics.mean(vals):.4f} | {runs} |")


if __name__ == "__main__":
    main()
