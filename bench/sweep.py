"""The sweep behind choosing a model for a corpus and a budget (issue 21): held-out loss by
corpus, model size and training steps; and each size's speed on this machine.

    python bench/sweep.py speeds --out sweep/speeds.json        # quiet machine, ~7 minutes
    python bench/sweep.py run --texts ts150k,code150k --steps 300,1000,3000 --jobs 2
    python bench/sweep.py run --texts ts150k --budgets 90,240 --speeds sweep/speeds.json
    python bench/sweep.py run --texts ts1m --budgets 600 --sizes 1024x1 --jobs 1 --threads 0
    python bench/sweep.py table sweep/runs.jsonl --speeds sweep/speeds.json --budgets 90,300

The learning runs are indexed by steps, not seconds, so they need no quiet machine and
carry to other hardware: a run of N steps follows the same schedule whether N came from
`--max-steps` or from a time limit (the learning rate decays over the planned steps
either way), and each run uses one thread, so `--jobs` runs can share the cores without
changing their results (`--jobs 1 --threads 0`: one run at a time with charrnn's own
thread choice, quicker for long budgets; the steps, and so the result, are the same).
What a budget of T seconds buys a size is T x its speed, timed apart (`speeds`, with
charrnn's own thread choice, as a user's run trains; on a GPU, its own timing):
`table --budgets` turns each size's loss-by-steps into loss-by-seconds here
by interpolating in log steps. Each run validates on its text's last 10%, as `charrnn
eval` would, and records the best validation loss.

Texts: prefixes of Tiny Shakespeare (prose, 65 characters) and of this Python's standard
library sources (code, about 100 characters), so anyone can rebuild them; `--texts` names
them as KIND + SIZE (ts150k, ts1m, code150k, code1m, code10m).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
SIZES = [(64, 1), (128, 1), (128, 2), (256, 1), (256, 2), (384, 2), (512, 1), (512, 2)]
UNITS = {"k": 1_000, "m": 1_000_000}


def text(name: str, folder: str) -> str:
    """The text `name` (e.g. ts150k, code1m) as a file in `folder`, built if missing."""
    path = os.path.join(folder, name + ".txt")
    if os.path.exists(path):
        return path
    kind, size = name.rstrip("0123456789km"), name[len(name.rstrip("0123456789km")) :]
    chars = int(size[:-1]) * UNITS[size[-1]]
    body = _prose(chars) if kind == "ts" else _code(chars)
    if len(body) < chars:
        raise SystemExit(f"{name}: only {len(body):,} characters available")
    with open(path, "w", encoding="utf-8") as f:
        f.write(body[:chars])
    return path


def _prose(chars: int) -> str:
    with open(TS, encoding="utf-8") as f:
        return f.read()[:chars]


def _code(chars: int) -> str:
    """The standard library's .py files in sorted order (no tests, no site-packages)."""
    root, parts, total = sysconfig.get_paths()["stdlib"], [], 0
    for folder, subfolders, files in sorted(os.walk(root)):
        subfolders.sort()
        if any(skip in folder for skip in ("test", "site-packages", "idlelib")):
            continue
        for name in sorted(files):
            if name.endswith(".py") and total < chars:
                with open(os.path.join(folder, name), encoding="utf-8", errors="ignore") as f:
                    parts.append(f.read())
                total += len(parts[-1])
    return "".join(parts)


def speeds(args: argparse.Namespace) -> None:
    """Characters per second of each size, training on Tiny Shakespeare, median of 3
    timings of `--steps` steps after a warm-up (charrnn chooses the threads)."""
    import charrnn

    found = {}
    if os.path.exists(args.out):  # a later call times more sizes into the same file
        with open(args.out) as f:
            found = json.load(f)["chars_per_sec"]
    sizes = [_parse(z) for z in args.sizes.split(",")] if args.sizes else SIZES
    for hidden, layers in sizes:
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            for steps in (10, 10 + args.steps, 10, 10 + args.steps, 10, 10 + args.steps):
                began = time.perf_counter()
                charrnn.train(TS, out=tmp, force=True, max_steps=steps, eval_every=10**6,
                              sample_length=0, val_chars=1000, hidden_size=hidden,
                              num_layers=layers)  # fmt: skip
                times.append((steps, time.perf_counter() - began))
        short = statistics.median(t for s, t in times if s == 10)
        long = statistics.median(t for s, t in times if s > 10)
        chars_per_step = 24 * 64  # the default batch and window
        found[f"{hidden}x{layers}"] = args.steps * chars_per_step / (long - short)
        print(f"{hidden} x {layers}: {found[f'{hidden}x{layers}']:,.0f} chars/s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"chars_per_sec": found, "machine": _machine()}, f, indent=1)


def _machine() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    return f"{model}, {os.cpu_count()} cores"


def run(args: argparse.Namespace) -> None:
    """Every (text, size, steps) not yet in --out, --jobs at a time."""
    import subprocess

    folder = os.path.join(os.path.dirname(os.path.abspath(args.out)), "texts")
    os.makedirs(folder, exist_ok=True)
    done = set()
    if os.path.exists(args.out):
        with open(args.out) as f:
            done = {(r["text"], r["size"], r["steps"], r.get("dropout", 0.2))
                    for r in map(json.loads, f)}  # fmt: skip
    sizes = args.sizes.split(",") if args.sizes else [f"{h}x{n}" for h, n in SIZES]
    if args.budgets:  # the steps each size trains in these seconds here
        with open(args.speeds) as f:
            speed = json.load(f)["chars_per_sec"]
        counts = {size: [round(float(b) * speed[size] / (24 * 64)) for b in
                         args.budgets.split(",")] for size in sizes}  # fmt: skip
    else:
        counts = {size: [int(n) for n in args.steps.split(",")] for size in sizes}
    todo = [
        (name, size, steps)
        for name in args.texts.split(",")
        for size in sizes
        for steps in counts[size]
        if (name, size, steps, args.dropout) not in done
    ]
    running: list[subprocess.Popen] = []
    for name, size, steps in todo:
        cmd = [sys.executable, __file__, "one", text(name, folder), name, size, str(steps)]
        running.append(subprocess.Popen([*cmd, args.out, str(args.dropout), str(args.threads)]))
        while len(running) >= args.jobs:
            time.sleep(1)
            running = [p for p in running if p.poll() is None]
    for p in running:
        p.wait()


def one(path: str, name: str, size: str, steps: str, out: str, dropout: str, threads: str) -> None:
    import charrnn

    hidden, layers = _parse(size)
    steps_n = int(steps)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        result = charrnn.train(path, out=tmp, force=True, max_steps=steps_n,
                               threads=int(threads) or None,
                               eval_every=max(1, steps_n // 4), sample_length=0,
                               hidden_size=hidden, num_layers=layers,
                               dropout=float(dropout))  # fmt: skip
    row = {"text": name, "chars": os.path.getsize(path), "size": size, "steps": steps_n,
           "dropout": float(dropout),
           "best_val": result.best_val_loss, "history": result.history,
           "threads": int(threads) or "chosen",
           "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)


def table(args: argparse.Namespace) -> None:
    """Loss by steps for each text and size; with --speeds, loss by seconds here."""
    with open(args.path) as f:
        rows = [json.loads(line) for line in f]
    speed = {}
    if args.speeds:
        with open(args.speeds) as f:
            speed = json.load(f)["chars_per_sec"]
    for name in sorted({r["text"] for r in rows}):
        mine = [r for r in rows if r["text"] == name]
        print(f"\n{name} ({mine[0]['chars']:,} characters): best validation loss")
        print("| size | " + " | ".join(["steps, best val"] * max_runs(mine)) + " |")
        print("|---|" + "---|" * max_runs(mine))
        for size in sorted({r["size"] for r in mine}, key=_parse):
            found = sorted((r["steps"], r["best_val"]) for r in mine if r["size"] == size)
            print(f"| {size} | " + " | ".join(f"{s:,}: {v:.4f}" for s, v in found) + " |")
        for budget in map(float, args.budgets.split(",")) if speed else []:
            guesses = []
            for size in {r["size"] for r in mine} & set(speed):
                curve = sorted((r["steps"], r["best_val"]) for r in mine if r["size"] == size)
                want = budget * speed[size] / (24 * 64)
                loss = _log_interpolate(curve, want)
                if loss is not None:
                    guesses.append((loss, size, want))
            ranked = ", ".join(f"{z} {loss:.3f} ({w:,.0f} steps)" for loss, z, w in sorted(guesses))
            print(f"{budget:g} s here: {ranked or 'outside the steps swept'}")


def max_runs(rows: list[dict]) -> int:
    """The most runs any one size has among rows."""
    sizes = [r["size"] for r in rows]
    return max(sizes.count(z) for z in set(sizes))


def _log_interpolate(curve: list[tuple[int, float]], steps: float) -> float | None:
    """The loss at `steps` on a curve of (steps, loss), linear in log steps; None outside."""
    for (s0, l0), (s1, l1) in itertools.pairwise(curve):
        if s0 <= steps <= s1:
            t = (math.log(steps) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return l0 + t * (l1 - l0)
    return None


def fit(args: argparse.Namespace) -> None:
    """Fit charrnn/sizing.py's cost and loss laws to the speeds and the runs (dropout 0.2),
    and show, for each (text, steps budget), the size measured best and the size the fitted
    law picks."""
    import torch

    with open(args.speeds) as f:
        speed = json.load(f)["chars_per_sec"]
    _fit_cost(speed)
    with open(args.path) as f:
        rows = [r for r in map(json.loads, f) if r.get("dropout", 0.2) == 0.2]
    # The law is fitted where it holds; the texts left out are checks of the rule's guard.
    checks = [r for r in rows if r["text"] in args.check.split(",")]
    rows = [r for r in rows if r not in checks]
    kinds = sorted({r["text"] for r in rows})  # E per text: 150 KB of code is not 10 MB of it
    data = _law_inputs(rows, kinds)
    y = torch.tensor([r["best_val"] for r in rows], dtype=torch.float64)
    best = None
    starts = itertools.product((-3.0, -1.0), (-1.0,), (-2.0, 0.0), (-1.0,), (0.0, 3.0), (-2.0, 2.0))
    for start in starts:
        theta = torch.tensor([*start, *[1.0] * len(kinds)], dtype=torch.float64)
        loss, theta = _fit_from(theta, data, y)
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, theta)
    mse, theta = best
    a, alpha, b, beta = theta[0].exp(), theta[1].exp(), theta[2].exp(), theta[3].exp()
    r, upper = 1 + theta[4].exp(), theta[5].sigmoid()
    print(f"A, ALPHA = {a:.4g}, {alpha:.4g}\nB, BETA = {b:.4g}, {beta:.4g}\nR = {r:.4g}")
    print(f"UPPER = {upper:.3g}")
    print("E: " + ", ".join(f"{k} {theta[6 + i]:.4f}" for i, k in enumerate(kinds)))
    print(f"rms error {mse**0.5:.4f} nats/char over {len(rows)} runs")
    guess = _law(theta, *data)
    for i, row in enumerate(rows):
        row["guess"] = guess[i].item()
    _rule_check(rows + checks, speed)
    if args.held_out:
        _held_out(args.held_out, theta, kinds, speed)
    for key in sorted({(r["text"], round(r["steps"] * 24 * 64 / speed[r["size"]])) for r in rows}):
        same = [r for r in rows if (r["text"], round(r["steps"] * 1536 / speed[r["size"]])) == key]
        if len(same) < 3:
            continue
        measured = min(same, key=lambda r: r["best_val"])
        picked = min(same, key=lambda r: r["guess"])
        print(f"{key[0]} {key[1]} s: measured best {measured['size']} "
              f"{measured['best_val']:.4f}; law picks {picked['size']} "
              f"({picked['best_val']:.4f} measured); "
              + ", ".join(f"{r['size']} {r['best_val']:.3f}/{r['guess']:.3f}"
                          for r in same))  # fmt: skip


def _held_out(path: str, theta, kinds: list[str], speed: dict[str, float]) -> None:
    """Runs kept out of the fit (a longer budget, say): what the fitted law predicted for
    each, and whether the shipped rule picks the better of the sizes run there."""
    with open(path) as f:
        held = [json.loads(line) for line in f]
    guess = _law(theta, *_law_inputs(held, kinds))
    for row, g in zip(held, guess.tolist(), strict=True):
        seconds = round(row["steps"] * 1536 / speed[row["size"]])
        print(f"held out: {row['text']} {seconds} s {row['size']}: measured "
              f"{row['best_val']:.4f}, the law {g:.4f}")  # fmt: skip
    _rule_check(held, speed, least=2)


def _parse(size: str) -> tuple[int, int]:
    """ "512x2" -> (512, 2): hidden units, layers."""
    hidden, layers = map(int, size.split("x"))
    return hidden, layers


def _size(row: dict) -> tuple[int, int]:
    return _parse(row["size"])


def _law_inputs(rows: list[dict], kinds: list[str]) -> tuple:
    """The loss law's inputs for rows, float64 (P and D in millions): the first layer's
    recurrent weights and the layers' above, characters trained on, the text's training
    characters, and which text (E)."""
    import torch

    from charrnn import sizing

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    first = [sizing.recurrent_params(_size(r)[0], 1) for r in rows]
    total = [sizing.recurrent_params(*_size(r)) for r in rows]
    return (column([f / 1e6 for f in first]),
            column([(t - f) / 1e6 for t, f in zip(total, first, strict=True)]),
            column([r["steps"] * 24 * 64 / 1e6 for r in rows]),
            column([r["chars"] * 0.9 / 1e6 for r in rows]),
            torch.tensor([kinds.index(r["text"]) for r in rows], dtype=torch.long))  # fmt: skip


def _rule_check(rows: list[dict], speed: dict[str, float], least: int = 3) -> None:
    """charrnn's rule (sizing.choose, with the constants it ships) at each swept text and
    budget, among the sizes swept there, against the size measured best: the regret."""
    from charrnn import sizing

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["text"], round(r["steps"] * 1536 / speed[r["size"]])), []).append(r)
    for (name, seconds), same in sorted(groups.items()):
        sizes = {_size(r): r for r in same if _size(r) in sizing.SIZES}  # the candidates
        if len(same) < least or len(sizes) < 2:
            continue
        speeds = {size: speed[f"{size[0]}x{size[1]}"] for size in sizes}
        budget = sizing.Budget(seconds, None, "")
        choice = sizing.choose(int(same[0]["chars"] * 0.9), budget, speeds, 1536, True, "")
        got = sizes[(choice.hidden_size, choice.num_layers)]["best_val"]
        best = min(r["best_val"] for r in same)
        fixed = sizes.get(sizing.DEFAULT_SIZE, {}).get("best_val")
        print(f"rule at {name} {seconds} s: {choice.num_layers} x {choice.hidden_size} "
              f"{got:.4f}, best {best:.4f}, regret {got - best:.4f}; the fixed 2 x 256 "
              f"{'not swept' if fixed is None else f'{fixed:.4f}'}")  # fmt: skip


def _fit_from(theta, data, y):
    """Least squares of the law from one start (L-BFGS): (mean squared error, parameters)."""
    import torch

    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((_law(theta, *data) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return closure().item(), theta.detach()


def _law(theta, first, upper, d, n, kind):
    """sizing.predicted_loss with E per text kind, in fit parameters (logs where positive;
    the upper layers' worth through a sigmoid, in (0, 1))."""
    import torch

    p = first + theta[5].sigmoid() * upper
    pool = n * (1 + theta[4].exp())  # R >= 1: a first epoch is worth all its characters
    effective = pool * -torch.expm1(-d / pool)
    alpha, beta = theta[1].exp(), theta[3].exp()
    excess = theta[0].exp() * p**-alpha + theta[2].exp() * effective**-beta
    return theta[6:][kind] + excess


def _fit_cost(speed: dict[str, float]) -> None:
    """Least squares of seconds per char = layers x OVERHEAD + PER_PARAM x P."""
    import numpy as np

    from charrnn import sizing

    sizes = [_parse(z) for z in speed]
    weights = [sizing.recurrent_params(h, n) + h * sizing.SWEPT_VOCAB for h, n in sizes]
    x = np.array([[n, w] for (h, n), w in zip(sizes, weights, strict=True)], dtype=float)
    y = np.array([1 / speed[f"{h}x{n}"] for h, n in sizes])
    w = 1 / y  # relative error: the small sizes' costs matter as much as the large ones'
    (overhead, per_param), *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    print(f"OVERHEAD = {overhead:.4g}\nPER_PARAM = {per_param:.4g}")
    for (h, n), cost in zip(sizes, x @ [overhead, per_param], strict=True):
        print(f"  {h} x {n}: measured {speed[f'{h}x{n}']:,.0f} chars/s, law {1 / cost:,.0f}")


def plot(args: argparse.Namespace) -> None:
    """The figure in docs/choosing-a-model.md: measured against fitted loss for each swept
    text and budget, and the rule's choice by budget for several corpus sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from charrnn import sizing

    with open(args.speeds) as f:
        speed = json.load(f)["chars_per_sec"]
    with open(args.path) as f:
        rows = [r for r in map(json.loads, f) if r.get("dropout", 0.2) == 0.2]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        budget = round(r["steps"] * 24 * 64 / speed[r["size"]] / 30) * 30
        groups.setdefault((r["text"], budget), []).append(r)
    for (name, budget), same in sorted(groups.items()):
        if len(same) < 3:
            continue
        same.sort(key=lambda r: sizing.recurrent_params(*_size(r)))
        x = [sizing.recurrent_params(*_size(r)) / 1e6 for r in same]
        e = statistics.median(r["best_val"] - _excess(r) for r in same)
        kept_out = " (a check, not fitted)" if name == "ts20k" else ""
        (line,) = left.plot(
            x, [r["best_val"] for r in same], "o", label=f"{name}, {budget} s{kept_out}"
        )
        left.plot(x, [e + _excess(r) for r in same], "-", color=line.get_color(), alpha=0.6)
    left.set_xscale("log")
    left.set_xlabel("recurrent weights (millions)")
    left.set_ylabel("best validation loss (nats/char)")
    left.set_title("measured (dots) and the fitted law (lines)")
    left.legend(fontsize=8)
    default = speed["256x2"]
    cost = sizing.seconds_per_char
    speeds = {s: default * cost(*sizing.DEFAULT_SIZE) / cost(*s) for s in sizing.SIZES}
    budgets = [30 * 2**k for k in range(0, 11)]
    for chars in (20_000, 150_000, 1_000_000, 10_000_000, 100_000_000):
        chosen = [sizing.choose(chars, sizing.Budget(b, None, ""), speeds, 1536, False, "")
                  for b in budgets]  # fmt: skip
        right.plot([b / 60 for b in budgets],
                   [sizing.recurrent_params(c.hidden_size, c.num_layers) / 1e6 for c in chosen],
                   "o-", label=f"{chars / 1e6:g}M characters")  # fmt: skip
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("time budget on this CPU (minutes)")
    right.set_ylabel("recurrent weights of the chosen size (millions)")
    right.set_title("the rule's choice (fitted: 1 to 10 minutes; beyond, extrapolated)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


def _excess(row: dict) -> float:
    from charrnn import sizing

    hidden, layers = _size(row)
    return sizing.predicted_loss(hidden, layers, row["steps"] * 24 * 64, int(row["chars"] * 0.9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speeds")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sizes", default="", help="e.g. 1024x1,512x3 (default: the swept sizes)")
    p.add_argument("--out", default="sweep/speeds.json")
    p = sub.add_parser("run")
    p.add_argument("--texts", default="ts150k,code150k")
    p.add_argument("--steps", default="300,1000,3000")
    p.add_argument("--budgets", default="", help="seconds here instead of --steps, e.g. 90,240")
    p.add_argument("--speeds", default="sweep/speeds.json", help="for --budgets")
    p.add_argument("--sizes", default="", help="e.g. 128x1,256x2 (default: all timed)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="per run; 0: charrnn chooses")
    p.add_argument("--out", default="sweep/runs.jsonl")
    p = sub.add_parser("one")
    p.add_argument("rest", nargs=7)
    p = sub.add_parser("fit")
    p.add_argument("path")
    p.add_argument("--check", default="ts20k", help="texts kept out of the fit")
    p.add_argument("--held-out", default="", help="runs (jsonl) to predict, not fit")
    p.add_argument("--speeds", default="sweep/speeds.json")
    p = sub.add_parser("plot")
    p.add_argument("path")
    p.add_argument("--speeds", default="sweep/speeds.json")
    p.add_argument("--out", default="docs/choosing-a-model.svg")
    p = sub.add_parser("table")
    p.add_argument("path")
    p.add_argument("--speeds", default="")
    p.add_argument("--budgets", default="90,300")
    args = parser.parse_args()
    if args.what == "speeds":
        speeds(args)
    elif args.what == "run":
        run(args)
    elif args.what == "plot":
        plot(args)
    elif args.what == "fit":
        fit(args)
    elif args.what == "one":
        one(*args.rest)
    else:
        table(args)


if __name__ == "__main__":
    main()
