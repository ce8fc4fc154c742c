"""Does charrnn's choice of model beat the fixed default? (issue 21's targets)

For each TEXT:SECONDS pair, two runs with the same wall-clock budget, one after the other
on this machine: `charrnn train TEXT --time-limit SECONDS` (charrnn chooses the model)
and the same with `--hidden-size 256 --num-layers 2` (the fixed default). Each best.pt
is then scored by `charrnn eval` on the text's held-out last 10% (the validation split of
both runs). Run it on a quiet machine: the budget is wall-clock time.

    python bench/choice.py korean.txt:90 man10m.txt:240 [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

CHARRNN = [sys.executable, "-m", "charrnn"]
FIXED = ["--hidden-size", "256", "--num-layers", "2"]


def held_out(path: str, folder: str) -> str:
    """The last 10% of the text, as a file `charrnn eval` can score."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tail = os.path.join(folder, "held-out.txt")
    with open(tail, "w", encoding="utf-8") as f:
        f.write(text[len(text) - len(text) // 10 :])
    return tail


def one(path: str, seconds: str, extra: list[str], folder: str, tail: str) -> dict:
    out = os.path.join(folder, "fixed" if extra else "chosen")
    train = [*CHARRNN, "train", path, "--time-limit", f"{seconds}s", "--out", out, "--force"]
    proc = subprocess.run([*train, *extra, "--sample-length", "0"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    model = next((line for line in proc.stderr.splitlines() if line.startswith("model: ")), "")
    done = next(line for line in proc.stderr.splitlines() if line.startswith("done: "))
    scored = subprocess.run([*CHARRNN, "eval", tail, "--checkpoint", os.path.join(out, "best.pt"),
                             "--json"], capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(scored.stdout)
    steps = int(re.search(r"done: (\d+) steps", done)[1])
    return {"model": model or " ".join(extra), "steps": steps, "eval": result["loss_nats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="TEXT:SECONDS")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = []
    for pair in args.pairs:
        path, seconds = pair.rsplit(":", 1)
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                tail = held_out(path, folder)
                chosen = one(path, seconds, [], folder, tail)
                fixed = one(path, seconds, FIXED, folder, tail)
            row = {"text": os.path.basename(path), "seconds": int(seconds), "repeat": repeat,
                   "chosen": chosen, "fixed": fixed,
                   "gain": fixed["eval"] - chosen["eval"]}  # fmt: skip
            rows.append(row)
            print(f"{row['text']} {seconds}s: chosen {chosen['eval']:.4f} "
                  f"({chosen['steps']} steps; {chosen['model']}) | fixed 2 x 256 "
                  f"{fixed['eval']:.4f} ({fixed['steps']} steps) | gain {row['gain']:+.4f} "
                  "nats/char", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
