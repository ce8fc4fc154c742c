"""Corpus size: preparing a big corpus (cold and from the id cache) and training memory on it.

    python bench/corpus_scale.py            # 1 GB corpora (three kinds of text), ~6 min
    python bench/corpus_scale.py --mb 100   # smaller
    python bench/corpus_scale.py --kinds mixed --rounds 1

Preparation is measured on three kinds of text, each about --mb MB (generated, not shipped):
ascii (Tiny Shakespeare repeated), mixed (the same with one short Korean line before each
copy: 99.998% ASCII, the odd multi-byte character in every chunk) and korean (synthetic
Hangul: 2,000 syllables with Zipf-like frequencies, spaces and newlines; 3 bytes a syllable,
more than 256 distinct characters, so the ids are 2 bytes). A 10 MB mixed corpus gives the
memory a bounded preparation should stay near.

Each figure runs in a fresh subprocess (wall time includes starting Python and importing
torch). Peak RssAnon (anonymous memory: what the process allocated, not the page cache or
mapped files) is sampled from /proc/self/status every 5 ms by a thread; peak RSS is the
subprocess's ru_maxrss. Figures are medians over interleaved rounds. bench/run.py calls
`rows()` for its table.
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


def make_corpus(path: str, mb: int, kind: str = "ascii") -> float:
    """Write about `mb` MB of `kind` text (ascii, mixed or korean) to `path`; its size in MB."""
    if kind == "korean":
        block = _korean_block()
    else:
        with open(CORPUS, "rb") as f:
            block = f.read()
        if kind == "mixed":
            block = KOREAN_LINE.encode("utf-8") + block
    with open(path, "wb") as f:
        for _ in range(max(1, round(mb * 1_000_000 / len(block)))):
            f.write(block)
    return os.path.getsize(path) / 1e6


KINDS = ("ascii", "mixed", "korean")
KOREAN_LINE = "첫째 줄: 한국어 문장 하나, 안녕하세요!\n"


def _korean_block(num_chars: int = 400_000, seed: int = 0) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = np.arange(0xAC00, 0xAC00 + 2000)
    p = 1.0 / (np.arange(len(syllables)) + 10.0)
    codes = rng.choice(syllables, size=num_chars, p=p / p.sum())
    u = rng.random(num_chars)
    codes[u < 0.25] = ord(" ")
    codes[u > 0.985] = ord("\n")
    return "".join(map(chr, codes.tolist())).encode("utf-8")


# Prepares argv[1] into the cache argv[2]; prints cached, characters, peak RssAnon in KB.
_PREPARE = """
import sys, threading, time
def anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
peak = [anon()]
def watch():
    while True:
        peak[0] = max(peak[0], anon())
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
from charrnn import idcache, sources
p = idcache.prepare(sources.resolve([sys.argv[1]], "utf-8"), "utf-8", sys.argv[2])
peak[0] = max(peak[0], anon())
print(p.cached, p.num_chars, peak[0])
"""


def measure_prepare(path: str, cache: str) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in MB, peak RssAnon in MB) of preparing `path` in a fresh
    process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE.format(root=ROOT), sys.executable, "-c", _PREPARE,
         path, cache],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"preparing {path} failed:\n{proc.stderr[-2000:]}")
    out = proc.stdout.split()
    return time.perf_counter() - t0, int(out[-1]) / 1024, int(out[-2]) / 1024


def _prepare_code(path: str, cache: str) -> list[str]:
    code = (
        "from charrnn import idcache, sources;"
        f"p = idcache.prepare(sources.resolve([{path!r}], 'utf-8'), 'utf-8', {cache!r});"
        "print(p.cached, p.num_chars)"
    )
    return [sys.executable, "-c", code]


def prepare_rows(tmp, mb=1000, rounds=3, kinds=KINDS, log=print) -> list[tuple[str, ...]]:
    """Cold and cached preparation of each kind of text, and of a 10 MB mixed corpus."""
    paths = {kind: os.path.join(tmp, f"{kind}.txt") for kind in kinds}
    sizes = {kind: make_corpus(paths[kind], mb, kind) for kind in kinds}
    paths["10 MB mixed"] = os.path.join(tmp, "small-mixed.txt")
    sizes["10 MB mixed"] = make_corpus(paths["10 MB mixed"], 10, "mixed")
    runs: dict[str, list] = {"floor": []}
    runs.update({f"{kind} {when}": [] for kind in paths for when in ("cold", "cached")})
    for _ in range(rounds):
        runs["floor"].append(measure([sys.executable, "-c", "import torch, numpy"]))
        for kind, path in paths.items():  # interleaved: a busy spell slows every kind alike
            cache = os.path.join(tmp, f"cache-{kind}")
            shutil.rmtree(cache, ignore_errors=True)
            runs[f"{kind} cold"].append(measure_prepare(path, cache))
            runs[f"{kind} cached"].append(measure_prepare(path, cache))
            shutil.rmtree(cache, ignore_errors=True)
            cold, cached = runs[f"{kind} cold"][-1], runs[f"{kind} cached"][-1]
            log(
                f"  prepare {kind} ({sizes[kind]:,.0f} MB): cold {cold[0]:.1f} s, RssAnon "
                f"{cold[2]:.0f} MB (RSS {cold[1]:.0f}); cached {cached[0]:.1f} s, RssAnon "
                f"{cached[2]:.0f} MB (RSS {cached[1]:.0f})"
            )

    def med(name, i):
        return statistics.median(r[i] for r in runs[name])

    floor = f"{med('floor', 0):.1f} s, {med('floor', 1):.0f} MB RSS (import torch only)"
    table = []
    for kind in paths:
        what = kind if kind == "10 MB mixed" else f"{sizes[kind]:,.0f} MB {kind}"
        for when in ("cold", "cached"):
            name = f"{kind} {when}"
            table.append(
                (
                    f"prepare {what} text, {when}",
                    floor,
                    f"{med(name, 0):.1f} s, {med(name, 2):.0f} MB RssAnon peak "
                    f"({med(name, 1):.0f} MB RSS)",
                    f"{sizes[kind] / (med(name, 0) - med('floor', 0)):,.0f} MB/s after imports"
                    if sizes[kind] >= 100
                    else "memory reference for the rows above",
                )
            )
    for path in paths.values():
        os.unlink(path)
    return table


def _train_argv(path: str, out: str, cache: str) -> list[str]:
    # The default model, a few steps: two evaluations and saves. Memory is the question,
    # not speed; the validation bound is lowered only to keep the row short on 2 cores.
    return [sys.executable, "-m", "charrnn", "train", path, "--out", out, "--force",
            "--cache-dir", cache, "--max-steps", "10", "--eval-every", "5", "--quiet",
            "--val-chars", "50000", "--device", "cpu"]  # fmt: skip


def train_rows(tmp: str, mb: int = 1000, rounds: int = 3, log=print) -> list[tuple[str, ...]]:
    """Training memory on a big corpus against a 10 MB one (both already prepared)."""
    big = os.path.join(tmp, "big.txt")
    small = os.path.join(tmp, "small.txt")
    size = make_corpus(big, mb)
    small_size = make_corpus(small, 10)
    cache = os.path.join(tmp, "idcache")
    label = f"{size:,.0f} MB"
    table = []

    def med(runs, i):
        return statistics.median(r[i] for r in runs)

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


def rows(tmp: str, mb: int = 1000, rounds: int = 3, log=print) -> list[tuple[str, ...]]:
    return prepare_rows(tmp, mb, rounds, log=log) + train_rows(tmp, mb, rounds, log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1000, help="size of the big corpus in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--no-train", action="store_true", help="preparation rows only")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="charrnn-bench-scale-")
    try:
        table = prepare_rows(tmp, args.mb, args.rounds, args.kinds)
        if not args.no_train:
            table += train_rows(tmp, args.mb, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| what | baseline | charrnn | ratio |\n|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
