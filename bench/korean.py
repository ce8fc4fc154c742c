"""Quality on real Korean text: one-hot input against a learned embedding.

    python bench/korean.py --steps 300            # 3 seeds x 2 inputs x 300 steps (README)
    python bench/korean.py                        # equal time instead: 90 s each
    python bench/korean.py --seconds 60 --seeds 1 2 --inputs onehot embedding
    python bench/korean.py --nfd                  # the same text as jamo: 170 distinct
    OMP_NUM_THREADS=1 python bench/korean.py --cpu-seconds 90   # equal compute (below)
    OMP_NUM_THREADS=1 python bench/korean.py --cpu-seconds 90 --text corpora/tinyshakespeare.txt

The text: the Korean texts bundled in the konlpy package (0.6.0, on PyPI): the
Constitution of the Republic of Korea (konlpy/data/corpus/kolaw) and ten National
Assembly bills (konlpy/data/corpus/kobill), joined by newlines: 65,565 characters, 560
distinct. konlpy is GPLv3; the texts themselves are a constitution and bills, which the
Korean Copyright Act (Article 7) leaves unprotected. The wheel is fetched with
`pip download` (or give --wheel); nothing from it is imported or run: the texts are read
from the zip.

Each run is `charrnn train` with the defaults except --input, --random-seed, the time
limit (or --max-steps) and --eval-every 100; runs are interleaved (onehot s1, embedding
s1, onehot s2, ...) so a busy machine slows both sides alike. The figure is the best
validation loss.

With --nfd each syllable is decomposed into its jamo (Unicode NFD: 한 -> ㅎ ㅏ ㄴ as
conjoining jamo): the same text as 119,257 characters of 170 kinds, a second vocabulary
size. Its losses are per jamo, not comparable with the syllable runs'. With --text FILE
any UTF-8 text is compared instead (README: Tiny Shakespeare at 65 characters, Python's
docs at 100).

On a shared machine a wall-clock limit buys a different number of steps from minute to
minute (one run of the same options got 236 steps in 90 s, the next 1,037), so
--cpu-seconds S compares at equal compute instead: each input's training step is first
timed in CPU seconds (process time, one thread, interleaved rounds, medians; a busy
neighbour barely changes it), then each run trains for the steps that fit in S seconds
at that cost (--max-steps), so the schedule still decays to the end as it does with
--time-limit.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KONLPY = "konlpy==0.6.0"


def korean_text(wheel: str | None, tmp: str) -> str:
    if wheel is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", KONLPY, "-d", tmp],
            check=True,
        )
        wheel = glob.glob(os.path.join(tmp, "konlpy-*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        names = sorted(
            n
            for n in z.namelist()
            if n.startswith(("konlpy/data/corpus/kolaw/", "konlpy/data/corpus/kobill/"))
            and n.endswith(".txt")
        )
        return "\n".join(z.read(n).decode("utf-8") for n in names)


def step_cpu_seconds(text: str, inputs: list[str], tmp: str, rounds: int = 3) -> dict[str, float]:
    """CPU seconds (process time) per training step of the default model with each input
    on this text: charrnn's own train(), steps 3 to 13 of a run, interleaved rounds, medians."""
    import time

    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.corpus import Text, build_corpus
    from charrnn.rundir import RunDir
    from charrnn.training import StepDone, train

    corpus = build_corpus(Text(text, "korean"), 0.1, 1)
    first, last = 3, 13
    costs: dict[str, list[float]] = {name: [] for name in inputs}
    for _ in range(rounds):
        for name in inputs:
            marks: dict[int, float] = {}

            def on_event(event, marks=marks):
                if isinstance(event, StepDone) and event.step in (first, last):
                    marks[event.step] = time.process_time()

            run_dir = RunDir(os.path.join(tmp, f"cost-{name}"))
            run_dir.prepare(resume=False, force=True)
            model = ModelConfig(vocab_size=len(corpus.vocab), input=name)
            train(model, TrainConfig(max_steps=last, eval_every=10**9), corpus, run_dir, on_event)
            costs[name].append((marks[last] - marks[first]) / (last - first))
    return {name: statistics.median(c) for name, c in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="a konlpy wheel already downloaded")
    parser.add_argument("--text", help="compare on this UTF-8 file instead of the Korean text")
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--steps", type=int, help="equal steps instead of equal time")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--inputs", nargs="+", default=["onehot", "embedding"])
    parser.add_argument("--extra", default="", help="more options for every run")
    parser.add_argument("--nfd", action="store_true", help="decompose syllables into jamo")
    parser.add_argument(
        "--cpu-seconds", type=float, help="equal compute: steps that fit in this much CPU time"
    )
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="charrnn-korean-")
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
    else:
        text = korean_text(args.wheel, tmp)
    if args.nfd:
        text = unicodedata.normalize("NFD", text)
    path = os.path.join(tmp, "korean.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"corpus: {len(text):,} characters, {len(set(text))} distinct", flush=True)
    from charrnn.checkpoint import load_checkpoint

    budget: dict[str, int] = {}
    if args.cpu_seconds:
        cost = step_cpu_seconds(text, args.inputs, tmp)
        budget = {name: max(1, round(args.cpu_seconds / cost[name])) for name in args.inputs}
        for name in args.inputs:
            print(f"  {name}: {cost[name] * 1000:.0f} ms CPU per step -> {budget[name]} steps")
    results: dict[str, list[float]] = {name: [] for name in args.inputs}
    steps: dict[str, list[int]] = {name: [] for name in args.inputs}
    for seed in args.seeds:
        for name in args.inputs:
            out = os.path.join(tmp, f"{name}-{seed}")
            cmd = [sys.executable, "-m", "charrnn", "train", path, "--out", out, "--quiet",
                   "--input", name, "--random-seed", str(seed), "--eval-every", "100",
                   # the model as measured (2 x 256, dropout 0.2), not charrnn's choice
                   "--hidden-size", "256", "--num-layers", "2", "--dropout", "0.2",
                   *(["--max-steps", str(budget.get(name) or args.steps)]
                     if budget or args.steps else ["--time-limit", f"{args.seconds}s"]),
                   *args.extra.split()]  # fmt: skip
            subprocess.run(cmd, check=True, cwd=ROOT)
            ckpt = load_checkpoint(os.path.join(out, "last.pt"))
            best = ckpt["best_val_loss"]
            results[name].append(best)
            steps[name].append(ckpt["step"])
            hist = ckpt["history"]
            print(f"  {name} seed {seed}: best val {best:.4f} nats/char in {ckpt['step']} steps, "
                  f"{hist[-1]['elapsed']:.0f} s", flush=True)  # fmt: skip
    print("\n| input | seeds | best val loss (nats/char) | median | steps (median) |")
    print("|---|---|---|---|---|")
    for name, losses in results.items():
        shown = ", ".join(f"{x:.4f}" for x in losses)
        print(f"| {name} | {len(losses)} | {shown} | {statistics.median(losses):.4f} "
              f"| {statistics.median(steps[name]):,.0f} |")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
