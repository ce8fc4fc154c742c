"""charrnn's benchmarks, side by side with plain-PyTorch baselines in the same run.

    python bench/run.py            # the full table (under ten minutes on 2 CPU cores)
    python bench/run.py --quick    # a one-minute look
    python bench/run.py --large-vocab  # only V = 65, 2,000, 6,000 training and V = 6,000 sampling
    OMP_NUM_THREADS=1 python bench/run.py --large-vocab --cpu-time  # on a shared machine
    python bench/run.py --quality  # also: validation loss after `--time-limit 5m` (5 more min)

Every figure is a median over interleaved blocks (baseline, ours, baseline, ours, ...),
so a noisy neighbour slows both sides alike; a ratio is the median of ours / baseline
over the rounds, each round's pair run back to back.
The baselines are written plainly below, the way a tutorial would write them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charrnn.config import ModelConfig, SampleConfig, TrainConfig  # noqa: E402
from charrnn.corpus import build_corpus, read_text  # noqa: E402
from charrnn.device import resolve_precision  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402
from charrnn.rundir import RunDir  # noqa: E402
from charrnn.sample import generate  # noqa: E402
from charrnn.training import StepDone, train  # noqa: E402

CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")

# What the training and sampling blocks are timed with: wall-clock time, or with --cpu-time
# this process's CPU time (with OMP_NUM_THREADS=1: one core's work, which a busy
# neighbour on a shared machine barely changes).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = ["wall"]


def clock() -> float:
    return CLOCKS[CLOCK[0]]()


CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


# ------------------------------------------------------------------- baselines


def baseline_train_block(kind, hidden, layers, ids, vocab_size, batch, seq_len, steps):
    """A bare loop: one-hot -> nn.LSTM/GRU/RNN -> Linear -> cross-entropy, Adam, clipping,
    hidden carried and detached between windows. Returns chars/s over `steps` timed steps."""
    torch.manual_seed(0)
    rnn = CELLS[kind](vocab_size, hidden, layers, batch_first=True)
    head = nn.Linear(hidden, vocab_size)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    n = (len(ids) - 1) // batch
    x_all = ids[: n * batch].view(batch, n).long()
    y_all = ids[1 : n * batch + 1].view(batch, n).long()
    windows = n // seq_len
    hidden_state = None
    t0 = None
    warm = 3
    for step in range(steps + warm):
        if step == warm:
            t0 = time.perf_counter()
        s = (step % windows) * seq_len
        x, y = x_all[:, s : s + seq_len], y_all[:, s : s + seq_len]
        out, hidden_state = rnn(F.one_hot(x, vocab_size).float(), hidden_state)
        loss = F.cross_entropy(head(out).reshape(-1, vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if isinstance(hidden_state, tuple):
            hidden_state = tuple(h.detach() for h in hidden_state)
        else:
            hidden_state = hidden_state.detach()
    return steps * batch * seq_len / (time.perf_counter() - t0)


def naive_sample(rnn, head, vocab_size, length, seed=0):
    """One nn.LSTM call per character, default settings: the tutorial sampler."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, dtype=torch.long)
    h = None
    out = []
    t0 = clock()
    with torch.no_grad():
        for _ in range(length):
            o, h = rnn(F.one_hot(x, vocab_size).float(), h)
            p = F.softmax(head(o[:, -1]) / 0.8, dim=-1)
            x = torch.multinomial(p, 1, generator=gen)
            out.append(x.item())
    return length / (clock() - t0)


# ------------------------------------------------------------------------ ours


def ours_train_block(
    corpus, kind, hidden, layers, batch, seq_len, steps, precision, out, input="auto"
):
    """charrnn's own train() on the same data; chars/s between the StepDone events of the
    timed steps (data path, autocast, clipping, logging callback all included)."""
    model_config = ModelConfig(  # dropout 0: the same work as the baseline
        model=kind,
        vocab_size=len(corpus.vocab),
        hidden_size=hidden,
        num_layers=layers,
        dropout=0.0,
        input=input,
    )
    warm = 3
    config = TrainConfig(
        batch_size=batch,
        seq_len=seq_len,
        max_steps=steps + warm,
        eval_every=10**9,
        precision=precision,
        device="cpu",
    )
    marks = {}

    def on_event(event):
        if isinstance(event, StepDone) and event.step in (warm, steps + warm):
            marks[event.step] = clock()

    run_dir = RunDir(out)
    run_dir.prepare(resume=False, force=True)
    train(model_config, config, corpus, run_dir, on_event)
    return steps * batch * seq_len / (marks[steps + warm] - marks[warm])


# --------------------------------------------------------------------- helpers


def interleaved(fns, rounds):
    """Run the functions in turn, `rounds` times over: results[i][r] is fns[i] in round r."""
    results = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, results, strict=True):
            out.append(fn())
    return results


def row(table, what, base_runs, ours_runs, unit):
    """Medians of each side; the ratio is the median of the per-round ratios, so a change in
    the machine's speed between rounds (it is shared) cancels within each pair."""
    base, ours = statistics.median(base_runs), statistics.median(ours_runs)
    ratio = statistics.median(o / b for b, o in zip(base_runs, ours_runs, strict=True))
    table.append((what, f"{base:,.0f} {unit}", f"{ours:,.0f} {unit}", f"{ratio:.2f}x"))
    print(f"  {what}: baseline {base:,.0f}, ours {ours:,.0f} {unit} ({ratio:.2f}x)", flush=True)


def peak_rss_mb_of(code: str) -> tuple[float, float]:
    """Run `code` in a fresh interpreter; returns (its wall seconds, its own peak RSS in MB)."""
    code += "\nimport resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    wall = time.perf_counter() - t0
    return wall, int(out.split()[-1]) / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------- large vocabularies


def hangul_corpus(vocab_size: int, num_chars: int = 1_200_000, seed: int = 0):
    """A synthetic Korean-like text: Hangul syllables drawn with Zipf-like frequencies
    (p ~ 1 / (rank + 10)), a space after about one in three, every syllable at least once;
    vocab_size distinct characters in all (the space included). Generated, not shipped."""
    from charrnn.corpus import Text

    rng = np.random.default_rng(seed)
    syllables = np.arange(0xAC00, 0xAC00 + vocab_size - 1)
    p = 1.0 / (np.arange(len(syllables)) + 10.0)
    codes = rng.choice(syllables, size=num_chars, p=p / p.sum())
    codes[rng.random(num_chars) < 0.3] = ord(" ")
    codes[: len(syllables)] = syllables
    text = "".join(map(chr, codes.tolist()))
    return build_corpus(Text(text, f"hangul-{vocab_size}"), 0.002, 1)


def naive_embedding_sample(model, length, seed=0):
    """The tutorial sampler for an embedding model: embed -> nn.LSTM -> Linear per character."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, dtype=torch.long)
    h = None
    t0 = clock()
    with torch.no_grad():
        for _ in range(length):
            o, h = model.rnn(model.embed(x), h)
            p = F.softmax(model.head(o[:, -1]) / 0.8, dim=-1)
            x = torch.multinomial(p, 1, generator=gen)
    return length / (clock() - t0)


@contextlib.contextmanager
def previous_step():
    """train() with the training step as it was before charrnn/loss.py: F.cross_entropy on a
    float32 copy of the (N, V) logits, and Adam's per-tensor loop on the CPU (not fused)."""
    import charrnn.training.loop as loop
    import charrnn.training.prepare as prepare

    saved = loop.cross_entropy, prepare._fused
    loop.cross_entropy = lambda logits, targets: F.cross_entropy(logits.float(), targets)
    prepare._fused = lambda device: {"fused": True} if device.type == "cuda" else {}
    try:
        yield
    finally:
        loop.cross_entropy, prepare._fused = saved


def large_vocabulary_rows(table, precision, tmp, quick):
    """Training chars/s at V = 65 (Tiny Shakespeare), 2,000 and 6,000 (synthetic Hangul),
    one-hot input against the learned embedding, the default model (LSTM 2 x 256, batch 24,
    window 64, charrnn's default precision), and each default input with the previous
    training step (previous_step()), all in one interleaved series; then sampling at
    V = 6,000 against the naive loop."""
    sizes = (65, 2000) if quick else (65, 2000, 6000)
    # Small validation parts: train() ends each timed block with an (untimed) evaluation.
    shakespeare = build_corpus(read_text(CORPUS), 0.002, 1)
    corpora = {65: shakespeare} | {v: hangul_corpus(v) for v in sizes if v != 65}
    steps, rounds = (5, 2) if quick else (20, 5)
    fns, names = [], []
    for v in sizes:
        for input in ("onehot", "embedding", "previous"):

            def fn(v=v, input=input):
                out = os.path.join(tmp, f"vocab{v}-{input}")
                if input == "previous":  # the default input, trained the previous way
                    with previous_step():
                        default = ModelConfig(vocab_size=v).input
                        return ours_train_block(
                            corpora[v], "lstm", 256, 2, 24, 64, steps, precision, out, default
                        )
                return ours_train_block(
                    corpora[v], "lstm", 256, 2, 24, 64, steps, precision, out, input
                )

            fns.append(fn)
            names.append((v, input))
    print(f"large vocabularies: lstm 2x256, batch 24, window 64, {precision} (chars/s):")
    runs = dict(zip(names, interleaved(fns, rounds), strict=True))
    for v in sizes:
        default = ModelConfig(vocab_size=v).input
        what = f"train V={v:,}: one-hot vs embedding (default: {default})"
        row(table, what, runs[v, "onehot"], runs[v, "embedding"], "chars/s")
    for v in sizes:
        default = ModelConfig(vocab_size=v).input
        what = f"train V={v:,} {default}: previous step vs blocked loss + fused Adam"
        row(table, what, runs[v, "previous"], runs[v, default], "chars/s")
    # Against Tiny Shakespeare: each input against the same input (the defaults are one of
    # these pairs), and against Tiny Shakespeare's one-hot, its default until 2026-11-28.
    small = ModelConfig(vocab_size=65).input
    for v in sizes[1:]:
        default = ModelConfig(vocab_size=v).input
        pairs = [("onehot", "onehot"), ("embedding", "embedding")]
        pairs += [(default, "onehot")] if (default, "onehot") not in pairs else []
        for mine, theirs in (*pairs, ("previous", "previous")):
            ratios = [a / b for a, b in zip(runs[v, mine], runs[65, theirs], strict=True)]
            speed = statistics.median(runs[v, mine])
            what = f"train V={v:,} {mine} vs Tiny Shakespeare {theirs}"
            if (mine, theirs) == (default, small):
                what += " (the defaults)"
            elif (mine, theirs) == (default, "onehot"):
                what += " (its default before)"
            if mine == "previous":
                what = f"train V={v:,} vs Tiny Shakespeare, defaults, both the previous step"
            base = f"{statistics.median(runs[65, theirs]):,.0f} chars/s"
            ratio = statistics.median(ratios)
            table.append((what, base, f"{speed:,.0f} chars/s", f"{ratio:.2f}x"))
            print(f"  {what}: {speed:,.0f} chars/s ({ratio:.2f}x)", flush=True)

    # Sampling at the largest V: each input kind against the naive loop of the same model.
    big = max(sizes)
    length = 200 if quick else 600
    vocab = corpora[big].vocab
    for input in ("embedding", "onehot"):
        torch.manual_seed(0)
        model = CharRNN(ModelConfig("lstm", big, 256, 2, input=input)).eval()

        def base(model=model, input=input):
            if input == "embedding":
                return naive_embedding_sample(model, length // 2)
            return naive_sample(model.rnn, model.head, big, length // 2)

        def ours(model=model, streams=1):
            cfg = SampleConfig(length=length, num_samples=streams, random_seed=0)
            t0 = clock()
            for _ in generate(model, vocab, vocab.chars[1], cfg):
                pass
            return streams * length / (clock() - t0)

        # Several streams share each read of the weights; the naive loop runs one at a time.
        b, o1, o8 = interleaved([base, ours, lambda model=model: ours(model, 8)], 3)
        row(table, f"sample lstm 2x256, {input}, V={big:,}, 1 stream", b, o1, "chars/s")
        row(table, f"sample lstm 2x256, {input}, V={big:,}, 8 streams (naive: 1)", b, o8, "chars/s")


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute look")
    parser.add_argument("--quality", action="store_true", help="add the 5-minute quality run")
    parser.add_argument(
        "--large-vocab", action="store_true", help="only the large-vocabulary rows (~3 min)"
    )
    parser.add_argument(
        "--cpu-time", action="store_true", help="time blocks in CPU time (OMP_NUM_THREADS=1)"
    )
    args = parser.parse_args()
    quick = args.quick
    CLOCK[0] = "cpu" if args.cpu_time else "wall"

    torch.manual_seed(0)
    corpus = build_corpus(read_text(CORPUS), 0.1, 1)
    ids, vocab_size = corpus.train, len(corpus.vocab)
    precision = resolve_precision("auto", torch.device("cpu"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"charrnn's default precision here: {precision}; timed in {CLOCK[0]} time",
        flush=True,
    )
    table = []
    tmp = tempfile.mkdtemp(prefix="charrnn-bench-")
    if args.large_vocab:
        large_vocabulary_rows(table, precision, tmp, quick)
        print_table(table)
        return

    # -- training throughput, equal shapes: batch 32, window 64
    shapes = (
        [("lstm", 128), ("lstm", 256)]
        if quick
        else [(kind, hidden) for kind in ("lstm", "gru", "rnn") for hidden in (128, 256, 512)]
    )
    print("training throughput (2 layers, batch 32, window 64, chars/s):", flush=True)
    for kind, hidden in shapes:
        # A step costs about hidden^2: this keeps each timed block near 3 s on 2 cores.
        steps = max(10, int(2_500_000 / hidden**2)) if not quick else 10
        if kind == "rnn":
            steps *= 2  # a quarter of an LSTM's gate work
        rounds = 2 if quick else 3
        out = os.path.join(tmp, f"{kind}{hidden}")
        precisions = ["fp32", precision] if precision != "fp32" else ["fp32"]

        def base(kind=kind, hidden=hidden, steps=steps):
            return baseline_train_block(kind, hidden, 2, ids, vocab_size, 32, 64, steps)

        # One-hot, as the bare loop: the same model, so the rows compare implementations
        # (the default embedding input is compared with one-hot in the large-vocabulary rows).
        def ours(prec, kind=kind, hidden=hidden, steps=steps, out=out):
            return lambda: ours_train_block(
                corpus, kind, hidden, 2, 32, 64, steps, prec, out, "onehot"
            )

        # One baseline series serves every precision: base, fp32, bf16, base, fp32, ...
        b, *o = interleaved([base] + [ours(prec) for prec in precisions], rounds)
        for prec, o_prec in zip(precisions, o, strict=True):
            row(table, f"train {kind} 2x{hidden}, ours {prec}", b, o_prec, "chars/s")

    # -- sampling throughput
    print("sampling throughput (chars/s):", flush=True)
    length = 1000 if quick else 3000
    for hidden in (128, 256):
        torch.manual_seed(0)
        # One-hot, as the naive loop below feeds it.
        model = CharRNN(ModelConfig("lstm", vocab_size, hidden, 2, input="onehot")).eval()
        for streams in (1,) if quick else (1, 8):

            def base(model=model, streams=streams):
                # the naive loop draws one stream; run it `streams` times
                return naive_sample(model.rnn, model.head, vocab_size, length // 2)

            def ours(model=model, streams=streams):
                cfg = SampleConfig(length=length, num_samples=streams, random_seed=0)
                t0 = time.perf_counter()
                for _ in generate(model, corpus.vocab, "T", cfg):
                    pass
                return streams * length / (time.perf_counter() - t0)

            b, o = interleaved([base, ours], 3)
            what = f"sample lstm 2x{hidden}, {streams} stream(s) (baseline: 1)"
            row(table, what, b, o, "chars/s")

    large_vocabulary_rows(table, precision, tmp, quick)

    # -- data scale: read, check and encode a big corpus
    mb = 20 if quick else 200
    big = os.path.join(tmp, "big.txt")
    with open(CORPUS, "rb") as f:
        chunk = f.read()
    with open(big, "wb") as f:
        for _ in range(mb * 1_000_000 // len(chunk) + 1):
            f.write(chunk)
    size_mb = os.path.getsize(big) / 1e6
    code = (
        "from charrnn.corpus import read_text, build_corpus;"
        f"c = build_corpus(read_text({big!r}), 0.1, 2049)"
    )
    wall, peak = peak_rss_mb_of(code)
    baseline_wall, baseline_peak = peak_rss_mb_of("import torch, numpy")
    print(
        f"  read+check+encode {size_mb:.0f} MB: {wall:.1f} s wall incl. interpreter start "
        f"(bare `import torch`: {baseline_wall:.1f} s), peak RSS {peak:.0f} MB "
        f"({peak / size_mb:.1f}x the file; bare `import torch`: {baseline_peak:.0f} MB)",
        flush=True,
    )
    table.append(
        (
            f"read+encode {size_mb:.0f} MB corpus",
            f"{baseline_wall:.1f} s, {baseline_peak:.0f} MB (import torch only)",
            f"{wall:.1f} s, {peak:.0f} MB peak",
            f"{peak / size_mb:.1f}x file (torch included)",
        )
    )
    os.unlink(big)

    # -- corpus size: preparing into the id cache, cold and cached; training RSS on it
    print("corpus size (bench/corpus_scale.py):", flush=True)
    import corpus_scale

    table += corpus_scale.rows(tmp, mb=100 if quick else 1000, rounds=1 if quick else 3)

    # -- several processes (torchrun's launcher, gloo) against one, same total batch
    print("one process vs two (bench/scale_out.py):", flush=True)
    import scale_out

    steps, rounds = (100, 1) if quick else (300, 3)
    table += scale_out.rows(tmp, steps=steps, rounds=rounds, precision="fp32")

    # -- training memory does not grow with steps (resident set, read in the callback)
    rss = {}

    def record(event):
        if isinstance(event, StepDone) and event.step in (50, 400):
            rss[event.step] = rss_mb()

    run_dir = RunDir(os.path.join(tmp, "mem"))
    run_dir.prepare(resume=False, force=True)
    train(
        ModelConfig("lstm", vocab_size, 128, 2),
        TrainConfig(max_steps=400, eval_every=100, device="cpu"),
        corpus,
        run_dir,
        record,
    )
    print(f"  training memory: RSS {rss[50]:.0f} MB at step 50, {rss[400]:.0f} MB at step 400")
    table.append(
        ("train memory (RSS), step 50 -> 400", "-", f"{rss[50]:.0f} -> {rss[400]:.0f} MB", "-")
    )

    if args.quality:
        print("quality: charrnn train --time-limit 5m (defaults) ...", flush=True)
        qdir = os.path.join(tmp, "quality")
        subprocess.run(
            [sys.executable, "-m", "charrnn", "train", CORPUS, "--time-limit", "5m", "--out", qdir,
             "--quiet"],
            check=True,
        )  # fmt: skip
        from charrnn.checkpoint import load_checkpoint

        best = load_checkpoint(os.path.join(qdir, "best.pt"))["best_val_loss"]
        table.append(("val loss after 5 min (defaults)", "1.548 (issue #4)", f"{best:.3f}", "-"))

    print_table(table)


def print_table(table):
    print("\n| what | baseline | charrnn | ratio |\n|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
