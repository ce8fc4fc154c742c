"""What `charrnn novelty` costs on a 100 MB corpus, beside the plain way to ask the same.

    python bench/novelty.py             # 100 MB corpus (about two minutes on 2 cores)
    python bench/novelty.py --mb 10     # smaller

The corpus is Tiny Shakespeare's lines shuffled (fixed seed) and repeated to the size;
the sample is 5,000 characters of its text with one character in 40 changed, so both
copied and new n-grams occur. Ours: build the suffix array once, then answer every
position of the sample. Plain: Python's `in` (a fast substring search) per n-gram,
timed on a few and scaled to all 4 x 5,000 the report needs. Medians of --rounds,
interleaved; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charrnn.inspect.novelty import NGRAM_SIZES, CorpusIndex, load_index, novelty  # noqa: E402

CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")


def make_corpus(mb: float) -> str:
    with open(CORPUS, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    rng = random.Random(0)
    parts, size, target = [], 0, int(mb * 1e6)
    while size < target:
        rng.shuffle(lines)
        chunk = "".join(lines)
        parts.append(chunk)
        size += len(chunk)
    return "".join(parts)[:target]


def make_sample(text: str, length: int = 5000) -> str:
    rng = random.Random(1)
    start = rng.randrange(len(text) - length)
    chars = list(text[start : start + length])
    for i in range(0, length, 40):
        chars[i] = rng.choice("qxzjk")
    return "".join(chars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="corpus size in MB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = make_corpus(args.mb)
    sample = make_sample(corpus)
    rng = random.Random(2)
    probes = [sample[i : i + 20] for i in rng.sample(range(4000), 20)]  # 20 plain lookups
    build, query, plain, load = [], [], [], []
    scratch = tempfile.TemporaryDirectory()  # removed at the end: the array is 4 B/byte
    saved = os.path.join(scratch.name, "corpus.sa.npy")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        hits = sum(p in corpus for p in probes)
        plain.append((time.perf_counter() - t0) / len(probes))
        t0 = time.perf_counter()
        index = CorpusIndex(corpus)
        build.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = novelty(index, sample)
        query.append(time.perf_counter() - t0)
        index.save(saved)
        del index
        t0 = time.perf_counter()  # what `--index FILE` costs once the file exists
        assert novelty(load_index(corpus, saved), sample).ngrams == result.ngrams
        load.append(time.perf_counter() - t0)
    per_lookup = statistics.median(plain)
    lookups = sum(len(sample) - n + 1 for n in NGRAM_SIZES)
    ours = statistics.median(build) + statistics.median(query)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"corpus {len(corpus) / 1e6:.0f} MB, sample {len(sample):,} chars, {args.rounds} rounds")
    print(f"ours   index build   median {statistics.median(build):7.2f} s")
    print(f"ours   5,000 chars   median {statistics.median(query):7.2f} s (all positions, all n)")
    print(f"ours   with --index  median {statistics.median(load):7.2f} s (load, hash, answer)")
    print(f"plain  one `in`      median {per_lookup * 1e3:7.1f} ms ({hits}/{len(probes)} found)")
    print(f"plain  {lookups:,} lookups  est.  {per_lookup * lookups:7.0f} s")
    print(f"ratio  plain / ours        {per_lookup * lookups / ours:7.0f}x")
    print(f"peak memory (RSS)          {peak:7.0f} MB")
    print("result:", {n: round(s, 3) for n, s in result.ngrams.items()}, result.longest_length)
    scratch.cleanup()


if __name__ == "__main__":
    main()
