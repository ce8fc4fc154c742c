"""Corpus size: preparing a big corpus (cold and from the id cache) and training memory on it.

    python bench/corpus_scale.py            # 1 GB corpus (Tiny Shakespeare repeated), ~3 min
    python bench/corpus_scale.py --mb 100   # smaller

Each figure runs in a fresh subprocess (wall time includes starting Python and importing
torch; peak RSS is the subprocess's ru_maxrss). Figures are medians over interleaved
rounds. bench/run.py calls `rows()` for its table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")

# Runs `code` in a subprocess, then prints that subprocess's peak RSS in KB.
_MEASURE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, cwd={root!r})
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def measure(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of running `argv` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE.format(root=ROOT), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, int(proc.stdout.split()[-1]) / 1024


def make_corpus(path: str, mb: int) -> float:
    with open(CORPUS, "rb") as f:
        chunk = f.read()
    with open(path, "wb") as f:
        for _ in range(max(1, round(mb * 1_000_000 / len(chunk)))):
            f.write(chunk)
    return os.path.getsize(path) / 1e6


def _prepare_code(path: str, cache: str) -> list[str]:
    code = (
        "from charrnn import idcache, sources;"
        f"p = idcache.prepare(sources.resolve([{path!r}], 'utf-8'), 'utf-8', {cache!r});"
        "print(p.cached, p.num_chars)"
    )
    return [sys.executable, "-c", code]


def _train_argv(path: str, out: str, cache: str) -> list[str]:
    # The default model, a few steps: two evaluations and saves. Memory is the question,
    # not speed; the validation bound is lowered only to keep the row short on 2 cores.
    return [sys.executable, "-m", "charrnn", "train", path, "--out", out, "--force",
            "--cache-dir", cache, "--max-steps", "10", "--eval-every", "5", "--quiet",
            "--val-chars", "50000", "--device", "cpu"]  # fmt: skip


def rows(tmp: str, mb: int = 1000, rounds: int = 3, log=print) -> list[tuple[str, ...]]:
    big = os.path.join(tmp, "big.txt")
    small = os.path.join(tmp, "small.txt")
    size = make_corpus(big, mb)
    small_size = make_corpus(small, 10)
    cache = os.path.join(tmp, "idcache")
    label = f"{size:,.0f} MB"
    floor, cold, cached = [], [], []
    for _ in range(rounds):
        floor.append(measure([sys.executable, "-c", "import torch, numpy"]))
        shutil.rmtree(cache, ignore_errors=True)
        cold.append(measure(_prepare_code(big, cache)))
        cached.append(measure(_prepare_code(big, cache)))
        log(
            f"  prepare {label}: cold {cold[-1][0]:.1f} s / {cold[-1][1]:.0f} MB, cached "
            f"{cached[-1][0]:.1f} s / {cached[-1][1]:.0f} MB (import torch: {floor[-1][0]:.1f} s)"
        )

    def med(runs, i):
        return statistics.median(r[i] for r in runs)

    table = [
        (
            f"prepare {label} corpus, cold (empty id cache)",
            f"{med(floor, 0):.1f} s, {med(floor, 1):.0f} MB (import torch only)",
            f"{med(cold, 0):.1f} s, {med(cold, 1):.0f} MB peak",
            f"{size / (med(cold, 0) - med(floor, 0)):,.0f} MB/s after imports",
        ),
        (
            f"prepare {label} corpus, cached (hash + verify)",
            f"{med(floor, 0):.1f} s, {med(floor, 1):.0f} MB (import torch only)",
            f"{med(cached, 0):.1f} s, {med(cached, 1):.0f} MB peak",
            f"{size / (med(cached, 0) - med(floor, 0)):,.0f} MB/s after imports",
        ),
    ]
    # Training memory: both corpora already in the cache; 10 steps, two evaluations, saves.
    for path in (big, small):
        subprocess.run(_prepare_code(path, cache), check=True, capture_output=True)
    on_small, on_big = [], []
    for _ in range(rounds):
        on_small.append(measure(_train_argv(small, os.path.join(tmp, "o-small"), cache)))
        on_big.append(measure(_train_argv(big, os.path.join(tmp, "o-big"), cache)))
        log(
            f"  train 10 steps: peak RSS {on_small[-1][1]:.0f} MB on {small_size:.0f} MB, "
            f"{on_big[-1][1]:.0f} MB on {label}"
        )
    table.append(
        (
            f"train 10 steps, peak RSS: {label} vs {small_size:.0f} MB corpus",
            f"{med(on_small, 1):.0f} MB ({small_size:.0f} MB corpus)",
            f"{med(on_big, 1):.0f} MB ({label} corpus)",
            f"+{med(on_big, 1) - med(on_small, 1):.0f} MB",
        )
    )
    for path in (big, small):
        os.unlink(path)
    shutil.rmtree(cache, ignore_errors=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="size of the big corpus in MB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="charrnn-bench-scale-")
    try:
        table = rows(tmp, args.mb, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| what | baseline | charrnn | ratio |\n|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
