"""Dynamic against plain evaluation on a run's held-out tail (docs/dynamic-evaluation.md).

    charrnn train corpora/tinyshakespeare.txt --time-limit 4m --out /tmp/dyn-ts
    python bench/dynamic_eval.py -c /tmp/dyn-ts/best.pt corpora/tinyshakespeare.txt
    python bench/dynamic_eval.py -c /tmp/dyn-ts/best.pt corpora/tinyshakespeare.txt --grid
    python bench/dynamic_eval.py -c RUN/best.pt TEXT --paper     # also Krause et al.'s MS_g

TEXT is the text the checkpoint was trained on; its held-out tail is the part the run
validated on (the last --val-fraction of the characters, from the checkpoint). The tail is
split in two halves: --grid tunes lr and decay on the first half only and reports each
setting on both, so the second half shows whether the tuned setting carries over to text
it was not tuned on. The table rows: plain `eval`, `eval --dynamic` with its defaults
(and the other rule, sgd), each on the whole tail and the halves, with the seconds of the
whole tail (median of --repeats, plain and dynamic interleaved). --paper adds the rms rule
with MS_g measured on the training part (Krause et al.), which `charrnn eval` does not
offer: it needs the training text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import charrnn  # noqa: E402
from charrnn.corpus import split_sizes  # noqa: E402
from charrnn.dynamic import DynamicConfig, gradient_mean_squares, segment_losses  # noqa: E402
from charrnn.training import evaluate  # noqa: E402
from charrnn.vocab import encode_in  # noqa: E402


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"{name}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} thread(s)"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def text_ids(model: charrnn.Model, path: str) -> torch.Tensor:
    """The whole of `path` as the checkpoint's ids."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids, missing = encode_in(model.vocab, text)
    if missing:
        sys.exit(f"{path} has characters the checkpoint never saw: is it the training text?")
    return ids


def scored(losses: torch.Tensor) -> tuple[float, float, float]:
    """Mean loss over the whole tail, its first half and its second half."""
    half = len(losses) // 2
    return losses.mean().item(), losses[:half].mean().item(), losses[half:].mean().item()


def plain_losses(model: charrnn.Model, ids: torch.Tensor) -> torch.Tensor:
    # Plain evaluation as the per-character sequence dynamic evaluation gives, so the halves
    # compare: lr = decay = 0 takes no steps (equal to `charrnn eval`: tests/test_dynamic.py).
    still = DynamicConfig(lr=0.0, decay=0.0)
    return segment_losses(model.module, ids, still, model.device)


def timed(fn, repeats: int) -> tuple[object, float]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def row(name: str, values: tuple[float, float, float], seconds: float | None, base=None) -> None:
    gain = "" if base is None else f"{base[0] - values[0]:+.4f}"
    secs = "" if seconds is None else f"{seconds:8.1f}"
    whole, first, second = values
    print(f"| {name:<44} | {whole:.4f} | {first:.4f} | {second:.4f} | {gain:>7} | {secs} |")


def grid_row(name: str, losses: torch.Tensor, base: tuple[float, float, float]) -> None:
    value = losses.mean().item()
    print(f"| {name:<44} | | {value:.4f} | | {base[1] - value:+.4f} (1st half) | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("text", help="the text the checkpoint was trained on")
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--repeats", type=int, default=3, help="timings: median of this many")
    p.add_argument("--grid", action="store_true", help="tune lr x decay on the first half")
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-5, 1e-4, 2e-4, 4e-4, 8e-4])
    p.add_argument("--decays", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    p.add_argument("--sgd-lrs", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument(
        "--rows",
        type=float,
        nargs=2,
        action="append",
        metavar=("LR", "DECAY"),
        help="without --grid: an rms row on the whole tail (repeat for more)",
    )
    p.add_argument("--segments", type=int, nargs="+", default=[])
    p.add_argument("--paper", action="store_true", help="also rms with MS_g from training text")
    p.add_argument("--paper-chars", type=int, default=200_000)
    p.add_argument(
        "--paper-settings",
        type=float,
        nargs=2,
        action="append",
        metavar=("LR", "DECAY"),
        help="lr and decay of a --paper row (repeat for more; default 3e-5 1e-2)",
    )
    args = p.parse_args()
    args.paper_settings = args.paper_settings or [(3e-5, 1e-2)]

    model = charrnn.load(args.checkpoint)
    ids = text_ids(model, args.text)
    fraction = model.checkpoint["train_config"]["val_fraction"]
    num_train, _ = split_sizes(len(ids), fraction)
    tail = ids[num_train:]
    print(f"machine: {machine()}; load average at start {load_average()}")
    print(
        f"checkpoint {args.checkpoint}: step {model.checkpoint.get('step')}, best val "
        f"{model.checkpoint.get('best_val_loss'):.4f}; held-out tail of {args.text}: "
        f"{len(tail):,} characters (halves of {(len(tail) - 1) // 2:,} predictions)"
    )
    print("| setting | whole tail | 1st half | 2nd half | gain | seconds |")
    print("|---|---|---|---|---|---|")
    base = scored(plain_losses(model, tail))
    row("plain (lr 0)", base, None)
    if args.grid:  # on the first half only: the second is kept for checking the choice
        first = tail[: len(tail) // 2 + 1]
        for lr in args.lrs:
            for decay in args.decays:
                config = DynamicConfig(lr=lr, decay=decay)
                grid_row(f"rms lr {lr:g} decay {decay:g}", dyn(model, first, config), base)
        for seg in args.segments:
            config = DynamicConfig(segment_len=seg)
            grid_row(f"rms defaults, segments of {seg}", dyn(model, first, config), base)
        for lr in args.sgd_lrs:
            config = DynamicConfig(rule="sgd", lr=lr)
            grid_row(f"sgd lr {lr:g} decay {config.decay:g}", dyn(model, first, config), base)
    else:
        for lr, decay in args.rows or []:
            config = DynamicConfig(lr=lr, decay=decay)
            row(f"rms lr {lr:g} decay {decay:g}", scored(dyn(model, tail, config)), None, base)
        config = DynamicConfig(rule="sgd", lr=args.sgd_lrs[-1])
        name = f"sgd lr {config.lr:g} decay {config.decay:g}"
        row(name, scored(dyn(model, tail, config)), None, base)
    if args.paper:
        train_ids = ids[max(0, num_train - args.paper_chars) : num_train]
        seg = DynamicConfig().segment_len
        ms = gradient_mean_squares(model.module, train_ids, seg, model.device)
        for lr, decay in args.paper_settings:
            config = DynamicConfig(lr=lr, decay=decay)
            name = f"paper: MS_g of training text, lr {lr:g} decay {decay:g}"
            if args.grid:
                grid_row(name, dyn(model, tail[: len(tail) // 2 + 1], config, ms), base)
            else:
                row(name, scored(dyn(model, tail, config, ms)), None, base)
    # The timed rows, interleaved: `charrnn eval` as it runs, then --dynamic with its defaults.
    plain_s, dyn_s, result = [], [], None
    for _ in range(args.repeats):
        plain_s.append(timed(lambda: evaluate(model.module, tail, model.device), 1)[1])
        result, seconds = timed(lambda: dyn(model, tail, DynamicConfig()), 1)
        dyn_s.append(seconds)
    row("`charrnn eval` (plain, 1024-char chunks)", base, statistics.median(plain_s))
    defaults = dataclasses.asdict(DynamicConfig())
    label = "`eval --dynamic` " + " ".join(f"{k}={v}" for k, v in defaults.items() if k != "beta")
    row(label, scored(result), statistics.median(dyn_s), base)
    print(f"load average at end {load_average()}")


def dyn(model, tail, config, reference_ms=None) -> torch.Tensor:
    return segment_losses(model.module, tail, config, model.device, reference_ms)


if __name__ == "__main__":
    main()
