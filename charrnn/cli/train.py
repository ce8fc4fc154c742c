"""`charrnn train`: the options, a run in this process or launched over several, and
what the run's outcome tells the user."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any, NoReturn

import typer
from rich.markup import escape

from .. import api, planning
from ..cachedir import CACHE_ENV
from ..config import (
    DEFAULT_EPOCHS,
    LR_SCHEDULES,
    MODELS,
    PRECISIONS,
    ModelConfig,
    TrainConfig,
    parse_duration,
)
from ..distributed import LAUNCHER_ENV, World, is_reporter
from ..errors import UsageError
from ..request import MODEL_OPTIONS, TRAIN_OPTIONS, check_request
from ..rundir import RunDir
from ..sizing import short_count
from ..training import LN2, StopRequest
from .app import DEVICE_METAVAR, app, complete_device, examples, field_default, option
from .progress import Reporter, fmt_epochs, fmt_time, model_line
from .signals import install_stop_handlers, signal_seen
from .streams import err, guarded, unmute


@app.command(
    "train",
    epilog=examples(
        "charrnn train corpora/tinyshakespeare.txt --time-limit 5m",
        "charrnn train poems.txt --model gru --hidden-size 512 --out poems/",
        "charrnn train corpora/tinyshakespeare.txt --resume --time-limit 10m",
        "charrnn train big.txt --nproc-per-node 4 --batch-size 256   # 4 GPUs (or CPU processes)",
    ),
)
def train_cmd(
    ctx: typer.Context,
    corpus: list[str] = typer.Argument(
        ...,
        help="Text files or folders (every text file below) to learn from, joined in order; "
        "- for stdin.",
    ),
    out: str = typer.Option("checkpoints", "--out", "-o", help="Folder for checkpoints."),
    model: str = option(ModelConfig, "model", "lstm, rnn (tanh) or gru.", choices=MODELS),
    hidden_size: int = typer.Option(
        None,
        help="Units per layer (default: charrnn chooses width and depth from the text, the "
        "budget and this device's speed; see --dry-run).",
    ),
    num_layers: int = typer.Option(
        None,
        help="Stacked layers (default: chosen with the width; naming either chooses "
        f"yourself, the other then {field_default(ModelConfig, 'hidden_size')} units or "
        f"{field_default(ModelConfig, 'num_layers')} layers).",
    ),
    dropout: float = typer.Option(
        None,
        help="Dropout between layers and before the output (default: by the epochs in the "
        f"budget when charrnn chooses the size, else {field_default(ModelConfig, 'dropout')}).",
    ),
    weight_drop: float = option(
        ModelConfig,
        "weight_drop",
        "DropConnect on the recurrent weights W_hh while training (0: off).",
    ),
    embed_dropout: float = option(
        ModelConfig,
        "embed_dropout",
        "Drop whole characters from the input for a window while training (0: off).",
    ),
    locked_dropout: bool = option(
        ModelConfig,
        "locked_dropout",
        "Hold the output dropout's mask over each window's time steps (variational dropout).",
        "--locked-dropout",
    ),
    input: str = option(
        ModelConfig,
        "input",
        "onehot (x_t one-hot: W_xh itself, the notes' model), embedding (a learned E: "
        "W_xh = W_ih E, factored) or auto (the embedding: measured better at every size).",
    ),
    embedding_size: int = option(
        ModelConfig, "embedding_size", "Width D of E for --input embedding."
    ),
    batch_size: int = option(TrainConfig, "batch_size", "Parallel streams."),
    seq_len: int = option(TrainConfig, "seq_len", "Characters per BPTT window."),
    lr: float = option(TrainConfig, "lr", "Peak Adam learning rate."),
    lr_schedule: str = option(
        TrainConfig,
        "lr_schedule",
        "After warm-up: cosine or linear decay to the end of the run.",
        choices=LR_SCHEDULES,
    ),
    grad_clip: float = option(
        TrainConfig, "grad_clip", "Clip the global gradient L2 norm to this (0: off)."
    ),
    ema: float = option(
        TrainConfig,
        "ema",
        "Validate and save a moving average of the weights with this decay per step, "
        "e.g. 0.999 (0: off, the weights as trained).",
    ),
    val_fraction: float = option(
        TrainConfig, "val_fraction", "Fraction held out for validation (the end of the text)."
    ),
    val_chars: int = option(
        TrainConfig, "val_chars", "Held-out characters each validation predicts, at most."
    ),
    precision: str = option(
        TrainConfig,
        "precision",
        "fp32, bf16 or auto (bf16 where the hardware makes it fast).",
        choices=PRECISIONS,
    ),
    max_steps: int = typer.Option(None, help="Stop after this many steps in all."),
    epochs: float = typer.Option(
        None,
        help=f"Stop after this many epochs in all ({DEFAULT_EPOCHS:g} when no limit is given).",
    ),
    time_limit: str = typer.Option(None, help="Stop after this long, e.g. 90s, 5m, 1h."),
    eval_every: int = option(TrainConfig, "eval_every", "Steps between validations and saves."),
    device: str = typer.Option(
        field_default(TrainConfig, "device"),
        metavar=DEVICE_METAVAR,
        autocompletion=complete_device,
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
    ),
    threads: int = typer.Option(
        None,
        help="CPU threads (default: the faster of one and all, timed as it trains, "
        "or $OMP_NUM_THREADS).",
    ),
    random_seed: int = option(TrainConfig, "random_seed", "Seed for initialisation and dropout."),
    sample_length: int = option(
        TrainConfig,
        "sample_length",
        "Characters of the fixed-seed sample shown and logged at each evaluation (0: none).",
    ),
    encoding: str = typer.Option("utf-8", help="Text encoding of the corpus."),
    cache_dir: str = typer.Option(
        None,
        "--cache-dir",
        help=f"Folder of the prepared-ids cache (default: ${CACHE_ENV}, else ~/.cache/charrnn).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    init_from: str = typer.Option(
        None,
        help="Start a new run from this checkpoint's weights and model options (fine-tuning).",
    ),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that has a run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Say which model this run would train, its speed here and the epochs in the "
        "budget, and train nothing.",
    ),
    nproc_per_node: int = typer.Option(
        None,
        "--nproc-per-node",
        help="Train in this many processes on this machine (one per GPU; gloo on CPUs), "
        "started by torchrun's launcher; --batch-size is their total.",
    ),
) -> None:
    """Train a char-RNN on CORPUS, writing checkpoints to --out."""
    unmute()
    # Only what was typed counts: on --resume the rest comes from the checkpoint.
    typed = {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    }
    given = {
        name: value
        for name, value in ctx.params.items()
        if name in typed and name in MODEL_OPTIONS + TRAIN_OPTIONS
    }
    if dry_run:
        guarded(lambda: _dry_run(corpus, given, encoding, resume, init_from, cache_dir))
        return
    if nproc_per_node is not None:
        request = (corpus, resume, force, init_from, encoding, given)
        guarded(lambda: _launch(nproc_per_node, out, *request))
    try:
        guarded(
            lambda: _train(corpus, out, given, encoding, resume, force, init_from, quiet, cache_dir)
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or a signal before training began
        last = RunDir(out).last
        saved = f"{last} holds the last save" if os.path.exists(last) else "nothing was saved"
        if is_reporter():
            err.print(f"stopped at once; {saved}")
        raise typer.Exit(code=143 if signal_seen == ["SIGTERM"] else 130) from None


def _dry_run(
    corpus_paths: list[str],
    given: dict[str, Any],
    encoding: str,
    resume: bool,
    init_from: str | None,
    cache_dir: str | None,
) -> None:
    """--dry-run: the plan on stdout (it is what was asked for), nothing trained or written."""
    if resume or init_from is not None:
        flag = "--resume" if resume else "--init-from"
        raise UsageError(
            f"--dry-run plans a new run, and {flag} trains the checkpoint's model: drop one"
        )
    reporter = Reporter(quiet=False)  # the corpus line, on stderr as in a run
    err.print("reading the text, then timing a few training steps here...")
    choice = planning.plan(corpus_paths, encoding, cache_dir, reporter, given)
    print(model_line(choice))
    print(f"speed: about {choice.chars_per_sec:,.0f} characters/s here")
    print(
        f"budget: {choice.chars / 1e6:.3g}M characters: {fmt_epochs(choice.epochs)} epochs, "
        f"{choice.steps:,} steps"
    )
    if choice.expected:
        losses = ", ".join(f"{kind} {loss:.2f}" for kind, loss, _, _ in choice.expected)
        where = "; ".join(
            f"{kind}: {short_count(chars)} characters, {short_count(budget)} in the budget"
            for kind, _, chars, budget in choice.expected
        )
        print(
            f"expected validation loss: {losses} nats/char, what the sweep's nearest texts reached"
        )
        print(f"  ({where}); a text's own entropy sets its level: docs/choosing-a-model.md")
    if len(choice.ranking) > 1:
        best = choice.ranking[0][1]
        others = ", ".join(f"{size} (+{loss - best:.3f})" for size, loss in choice.ranking[1:4])
        print(f"next best by the fitted rule: {others}")
    print("nothing trained (--dry-run)")


def _launch(
    nproc: int,
    out: str,
    corpus_paths: list[str],
    resume: bool,
    force: bool,
    init_from: str | None,
    encoding: str,
    given: dict[str, Any],
) -> NoReturn:
    """--nproc-per-node: this process only launches the workers and reports how they ended."""
    from ..launch import run_workers, unanswered_message
    from ..sources import resolve as resolve_sources

    if World.from_env().launched:
        raise UsageError(
            "--nproc-per-node under torchrun: torchrun has already started the processes; "
            "drop the option (or run charrnn without torchrun)"
        )
    if nproc < 1:
        raise UsageError(f"--nproc-per-node must be at least 1 (got {nproc})")
    # What can be refused here is refused before N processes start (each would say it).
    world = World(size=nproc, local_size=nproc, launched=True)
    request = check_request(corpus_paths, resume, force, init_from, encoding, given, world)
    resolve_sources(request[2], request[1])
    outcome = run_workers(nproc, sys.argv[1:])
    last = RunDir(out).last
    message = None
    if outcome.killed is not None:
        rank, name = outcome.killed
        saved = f"{last} holds the newest save" if os.path.exists(last) else "nothing was saved"
        message = f"process rank {rank} was killed by {name}; the others were stopped; {saved}"
    elif outcome.unanswered:  # after a signal; rank 0 could not say what happened
        message = unanswered_message(outcome, last)
    if message is not None:
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
        if os.path.exists(last):
            again = shlex.join(["charrnn", "train", *corpus_paths, "--out", out, "--resume"])
            err.print(f"continue with: {again} --nproc-per-node {nproc}")
    raise typer.Exit(code=outcome.exit_code)


def _train(
    corpus_paths: list[str],
    out: str,
    given: dict[str, Any],
    encoding: str,
    resume: bool,
    force: bool,
    init_from: str | None,
    quiet: bool,
    cache_dir: str | None,
) -> None:
    stop = StopRequest()
    speaks = is_reporter()  # under torchrun, rank 0 alone shows progress and the outcome
    reporter = Reporter(quiet or not speaks)
    restore = install_stop_handlers(stop, out)
    try:
        result = api.train(
            corpus_paths,
            out,
            resume=resume,
            force=force,
            init_from=init_from,
            encoding=encoding,
            cache_dir=cache_dir,
            on_event=reporter,
            stop=stop,
            **given,
        )
    except Exception:
        if signal_seen:  # stopped at once part-way through something (a save, say)
            raise KeyboardInterrupt from None
        raise
    finally:
        reporter.stop_live()
        restore()

    if not speaks:
        if result.stop_reason in ("SIGINT", "SIGTERM"):
            raise typer.Exit(code=130 if result.stop_reason == "SIGINT" else 143)
        return
    if result.stop_reason == "already_done":
        err.print(
            f"nothing to do: the run in {out} is at step {result.step}, its limit; nothing was "
            "changed. To train further, give a higher --max-steps or --epochs, or a --time-limit"
        )
        return
    if result.stop_reason in ("SIGINT", "SIGTERM"):
        again = shlex.join(["charrnn", "train", *corpus_paths, "--out", out, "--resume"])
        if os.environ.get(LAUNCHER_ENV):
            again += f" --nproc-per-node {os.environ[LAUNCHER_ENV]}"
        elif World.from_env().launched:
            again = f"the same torchrun command with: {again[len('charrnn ') :]}"
        err.print(
            f"stopped by {result.stop_reason} at step {result.step}; saved {result.last_path}. "
            f"Continue with: {again}"
        )
        raise typer.Exit(code=130 if result.stop_reason == "SIGINT" else 143)
    if not quiet:
        best = result.best_val_loss
        best_text = f"{best:.4f} nats/char ({best / LN2:.3f} bits/char)" if best else "-"
        err.print(
            f"done: {result.step} steps, {fmt_epochs(result.epoch)} epochs in "
            f"{fmt_time(result.elapsed)} ({_why(result, given)}); best "
            f"validation loss {best_text}; checkpoints in {folder(out)}{_unvalidated(result, out)}"
        )


def folder(path: str) -> str:
    """A folder as the user typed it, with one trailing slash (`poems/`, never `poems//`)."""
    return path if path.endswith(os.sep) else path + os.sep


def _why(result: Any, given: dict[str, Any]) -> str:
    """Why the run stopped, for the done line: a time-limited run ends early on purpose."""
    if result.stop_reason != "time_limit":
        return result.stop_reason.replace("_", " ")
    limit = given.get("time_limit")  # as typed, or parsed already by the request's checks
    limit = parse_duration(limit) if isinstance(limit, str) else limit
    if limit is not None and limit - result.elapsed >= 1:
        return (
            f"time limit: ended {fmt_time(limit - result.elapsed)} before its {fmt_time(limit)}, "
            "the margin kept for the final validation"
        )
    return "time limit: stopped in time for the final validation"


def _unvalidated(result: Any, out: str) -> str:
    """When the newest model was saved without a validation, say so: `sample` reads best.pt."""
    validated = [r["step"] for r in result.history]
    if validated and validated[-1] == result.step:
        return ""
    last = RunDir(out).last
    return f" (the newest model, step {result.step}, is {last}: sample it with -c {last})"
