"""The command line: parse options, call one library function, report on stderr.

Only this module imports typer or rich. stdout carries nothing but the command's data
(generated text, eval/info results); progress, warnings and errors go to stderr.
Every CharRNNError leaves through `_fail`: one `error: ...` line and its exit code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .batches import min_train_chars
from .checkpoint import check_resumable, load_checkpoint, model_from_checkpoint
from .config import (
    AUTO_ONEHOT_MAX_VOCAB,
    DEFAULT_EPOCHS,
    RESUMABLE_OPTIONS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    describe_input,
    parse_duration,
)
from .corpus import build_corpus, read_text
from .device import resolve_device
from .errors import CharRNNError, UsageError
from .rundir import RunDir
from .sample import generate
from .train import (
    LN2,
    Evaluated,
    Notice,
    RunStarted,
    StepDone,
    StopRequest,
    evaluate,
    train,
)
from .vocab import Vocab, describe_chars, describe_vocab, encode_in

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Character-level RNN / LSTM / GRU: train on any text, sample into a pipeline.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# soft_wrap: a log line stays one line in a file or pipe (rich would cut it at 80 columns).
# markup off: paths and corpus text may hold [brackets]; only our own labels are styled.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _default(cls: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _fail(error: CharRNNError) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(str(error))}", markup=True)
    raise typer.Exit(code=error.exit_code)


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except CharRNNError as e:
        _fail(e)


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"charrnn {__version__}")
        raise typer.Exit()


# ------------------------------------------------------------------------- train


class Reporter:
    """Renders training events on stderr: a live rich line on a terminal, plain log lines
    (every `log_every` seconds and at each evaluation) when stderr is a file or pipe."""

    def __init__(self, quiet: bool, log_every: float = 10.0):
        self.quiet = quiet
        self.live = err.is_terminal and not quiet
        self.log_every = log_every
        self.last_log = 0.0
        self.val = "-"
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Notice):
            self.stop_live()
            _warn(event.message)
            return
        if self.quiet:
            return
        if isinstance(event, RunStarted):
            self.started(event)
        elif isinstance(event, Evaluated):
            self.val = f"{event.val_loss:.4f} ({event.val_bpc:.3f} bpc)"
            self.line(
                f"step {event.step} | epoch {event.epoch:.2f} | val loss {event.val_loss:.4f} "
                f"nats/char, {event.val_bpc:.3f} bits/char{' (best)' if event.is_best else ''}"
            )
        elif isinstance(event, StepDone):
            self.step(event)

    def started(self, e: RunStarted) -> None:
        what = "resuming at step" if e.resumed else "training from step"
        limits = []
        if e.limit_steps is not None:
            limits.append(f"{e.limit_steps} steps")
        if e.time_limit is not None:
            limits.append(_fmt_time(e.time_limit))
        self.line(
            f"{what} {e.step}: {e.num_params:,} parameters on {e.device} ({e.precision}); "
            f"{e.train_chars:,} training / {e.val_chars:,} validation characters, "
            f"vocabulary {e.vocab_size:,} ({e.input.replace('onehot', 'one-hot')} input); "
            f"{e.steps_per_epoch} steps per epoch; "
            f"stops at {' or '.join(limits)}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed:>6.0f}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=None, stats="")
            self.progress.start()

    def step(self, e: StepDone) -> None:
        stats = (
            f"epoch {e.epoch:.2f} | loss {e.loss:.4f} | val {self.val} | "
            f"{e.chars_per_sec:,.0f} chars/s | eta {_fmt_time(e.eta)}"
        )
        if self.progress is not None:
            total = e.plan_steps
            self.progress.update(self.task, completed=e.step, total=total, stats=stats)
        elif e.elapsed - self.last_log >= self.log_every:
            self.last_log = e.elapsed
            err.print(f"step {e.step} | {stats} | grad norm {e.grad_norm:.3f} | lr {e.lr:.2e}")

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            err.print(text)

    def stop_live(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _install_stop_handlers(stop: StopRequest) -> Callable[[], None]:
    """First SIGINT/SIGTERM: finish the step, save, exit. A second SIGINT: stop at once."""
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


_MODEL_OPTS = ("model", "hidden_size", "num_layers", "dropout", "input", "embedding_size")
_TRAIN_OPTS = (
    "batch_size",
    "seq_len",
    "val_fraction",
    "lr",
    "grad_clip",
    "precision",
    "random_seed",
)


def _resume_configs(ckpt: dict[str, Any], given: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    model_config = ModelConfig.from_dict(ckpt["model_config"])
    old = TrainConfig.from_dict(ckpt.get("train_config", {}))
    for name, value in given.items():
        if value is None or name in RESUMABLE_OPTIONS:
            continue
        current = getattr(model_config, name, getattr(old, name, None))
        if value != current:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} cannot change on --resume (the run has {current!r}); only the limits, "
                "--eval-every, --device and --quiet can: drop it, or start over with --force"
            )
    limits_given = any(given[k] is not None for k in ("max_steps", "epochs", "time_limit"))
    changes = {k: given[k] for k in RESUMABLE_OPTIONS if given[k] is not None}
    if limits_given:  # new limits replace the old ones as a set
        for k in ("max_steps", "epochs", "time_limit"):
            changes.setdefault(k, None)
    return model_config, dataclasses.replace(old, **changes)


def _opt(cls: type, name: str, help: str, *flags: str) -> Any:
    """An option whose default is the dataclass field's: each default is defined once."""
    return typer.Option(_default(cls, name), *flags, help=help)


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    corpus: str = typer.Argument(..., help="UTF-8 text file to learn from, or - for stdin."),
    out: str = typer.Option("checkpoints", "--out", "-o", help="Folder for checkpoints."),
    model: str = _opt(ModelConfig, "model", "lstm, rnn (tanh) or gru."),
    hidden_size: int = _opt(ModelConfig, "hidden_size", "Units per layer."),
    num_layers: int = _opt(ModelConfig, "num_layers", "Stacked layers."),
    dropout: float = _opt(ModelConfig, "dropout", "Dropout between layers and before the output."),
    input: str = _opt(
        ModelConfig,
        "input",
        "onehot (x_t one-hot, the notes' model), embedding (learned E: W_xh = W_ih E) or auto "
        f"(one-hot up to {AUTO_ONEHOT_MAX_VOCAB} distinct characters, embedding above).",
    ),
    embedding_size: int = _opt(
        ModelConfig, "embedding_size", "Width D of E for --input embedding."
    ),
    batch_size: int = _opt(TrainConfig, "batch_size", "Parallel streams."),
    seq_len: int = _opt(TrainConfig, "seq_len", "Characters per BPTT window."),
    lr: float = _opt(TrainConfig, "lr", "Peak Adam learning rate."),
    grad_clip: float = _opt(
        TrainConfig, "grad_clip", "Clip the global gradient L2 norm to this (0: off)."
    ),
    val_fraction: float = _opt(
        TrainConfig, "val_fraction", "Fraction held out for validation (the end of the text)."
    ),
    precision: str = _opt(
        TrainConfig, "precision", "fp32, bf16 or auto (bf16 where the hardware makes it fast)."
    ),
    max_steps: int = typer.Option(None, help="Stop after this many steps in all."),
    epochs: float = typer.Option(
        None,
        help=f"Stop after this many epochs in all ({DEFAULT_EPOCHS:g} when no limit is given).",
    ),
    time_limit: str = typer.Option(None, help="Stop after this long, e.g. 90s, 5m, 1h."),
    eval_every: int = _opt(TrainConfig, "eval_every", "Steps between validations and saves."),
    device: str = _opt(TrainConfig, "device", "auto, cpu, cuda, cuda:N or mps."),
    random_seed: int = _opt(TrainConfig, "random_seed", "Seed for initialisation and dropout."),
    encoding: str = typer.Option("utf-8", help="Text encoding of the corpus."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that has a run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a char-RNN on CORPUS, writing checkpoints to --out."""
    # Only what was typed counts: on --resume the rest comes from the checkpoint.
    typed = {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    }
    given = {
        name: (value if name in typed else None)
        for name, value in ctx.params.items()
        if name in _MODEL_OPTS + _TRAIN_OPTS + RESUMABLE_OPTIONS
    }
    given["time_limit"] = None
    try:
        _guarded(lambda: _train(corpus, out, given, time_limit, encoding, resume, force, quiet))
    except KeyboardInterrupt:  # a second Ctrl-C (or one before training began)
        last = RunDir(out).last
        saved = f"{last} holds the last save" if os.path.exists(last) else "nothing was saved"
        err.print(f"stopped at once; {saved}")
        raise typer.Exit(code=130) from None


def _train(
    corpus_path: str,
    out: str,
    given: dict[str, Any],
    time_limit: str | None,
    encoding: str,
    resume: bool,
    force: bool,
    quiet: bool,
) -> None:
    if resume and force:
        raise UsageError("--resume and --force contradict each other: choose one")
    if time_limit is not None:
        given["time_limit"] = parse_duration(time_limit)
    if not resume:  # validate options before touching the disk
        model_kw = {k: given[k] for k in _MODEL_OPTS if given[k] is not None}
        train_kw = {k: v for k, v in given.items() if k not in _MODEL_OPTS and v is not None}
        train_config = TrainConfig(**train_kw)
        ModelConfig(**model_kw, vocab_size=2)
    resolve_device(given["device"] or _default(TrainConfig, "device"))

    run_dir = RunDir(out)
    run_dir.prepare(resume=resume, force=force)
    run_dir.lock()
    try:
        ckpt = None
        if resume:
            ckpt = load_checkpoint(run_dir.last)
            check_resumable(ckpt, run_dir.last)
            model_config, train_config = _resume_configs(ckpt, given)
        text = read_text(corpus_path, encoding)
        for w in text.warnings:
            _warn(w)
        data = build_corpus(
            text,
            train_config.val_fraction,
            min_train_chars(train_config.batch_size, train_config.seq_len),
            vocab=Vocab.from_list(ckpt["vocab"]) if ckpt else None,
        )
        if not resume:
            model_config = ModelConfig(**model_kw, vocab_size=len(data.vocab))
        stop = StopRequest()
        reporter = Reporter(quiet)
        restore = _install_stop_handlers(stop)
        try:
            result = train(model_config, train_config, data, run_dir, reporter, ckpt, stop)
        finally:
            reporter.stop_live()
            restore()
    finally:
        run_dir.release()

    if result.stop_reason in ("SIGINT", "SIGTERM"):
        again = shlex.join(["charrnn", "train", corpus_path, "--out", out, "--resume"])
        err.print(
            f"stopped by {result.stop_reason} at step {result.step}; saved {run_dir.last}. "
            f"Continue with: {again}"
        )
        raise typer.Exit(code=130 if result.stop_reason == "SIGINT" else 143)
    if not quiet:
        best = result.best_val_loss
        best_text = f"{best:.4f} nats/char ({best / LN2:.3f} bits/char)" if best else "-"
        err.print(
            f"done: {result.step} steps, {result.epoch:.2f} epochs in "
            f"{_fmt_time(result.elapsed)} ({result.stop_reason.replace('_', ' ')}); best "
            f"validation loss {best_text}; checkpoints in {out}/"
        )


# ------------------------------------------------------------------------ sample


@app.command("sample")
def sample_cmd(
    checkpoint: str = typer.Option("checkpoints/best.pt", "--checkpoint", "-c"),
    seed: str = typer.Option(
        None,
        "--seed",
        "-s",
        help="Text to start from, printed first (default: the training text's first character).",
    ),
    length: int = typer.Option(
        _default(SampleConfig, "length"), "--length", "-n", help="Characters after the seed."
    ),
    temperature: float = typer.Option(
        _default(SampleConfig, "temperature"),
        "--temperature",
        "-t",
        help="Lower is safer, higher is wilder; 0 always takes the most likely character.",
    ),
    top_k: int = typer.Option(None, help="Draw only from the k most likely characters."),
    top_p: float = typer.Option(
        None, help="Draw only from the smallest set of characters with this much probability."
    ),
    num_samples: int = typer.Option(
        _default(SampleConfig, "num_samples"), help="Independent samples, generated together."
    ),
    separator: str = typer.Option(
        "\\n\\n", help="Printed between samples (escapes like \\n are understood)."
    ),
    random_seed: int = typer.Option(None, help="Seed for a repeatable sample."),
    device: str = typer.Option(
        "cpu", help="cpu (fastest for sampling; see README), cuda, cuda:N, mps or auto."
    ),
) -> None:
    """Generate text from a checkpoint and stream it to stdout."""
    try:
        _guarded(
            lambda: _sample(
                checkpoint,
                seed,
                separator,
                device,
                SampleConfig(
                    length=length,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    num_samples=num_samples,
                    random_seed=random_seed,
                ),
            )
        )
    except BrokenPipeError:
        _quiet_exit(0)
    except KeyboardInterrupt:
        _quiet_exit(130)


def _quiet_exit(code: int) -> NoReturn:
    # The reader went away (`| head`) or the user pressed Ctrl-C: whatever was written is
    # intact. Point stdout at /dev/null so the interpreter's final flush cannot complain.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    raise typer.Exit(code=code)


def _sample(
    checkpoint: str, seed: str | None, separator: str, device_name: str, config: SampleConfig
) -> None:
    device = resolve_device(device_name)
    if device_name == "auto":
        device = resolve_device("cpu")  # measured faster for one-at-a-time sampling
    ckpt = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(ckpt, checkpoint)
    if seed is None:
        seed = (ckpt.get("corpus") or {}).get("first_char") or vocab.chars[0]
    try:
        separator = separator.encode("utf-8").decode("unicode_escape")
    except UnicodeDecodeError:
        raise UsageError(
            f"--separator {separator!r} has a broken backslash escape: write \\n, \\t or \\\\"
        ) from None
    out = sys.stdout
    current = 0
    unflushed = 0
    last_flush = time.monotonic()
    for index, text in generate(model, vocab, seed, config, device):
        if index != current:
            out.write(separator)
            current = index
        out.write(text)
        unflushed += len(text)
        # Stream: flush at line ends and a few times a second, not per character.
        now = time.monotonic()
        if text.endswith("\n") or unflushed >= 4096 or now - last_flush > 0.05:
            out.flush()
            unflushed = 0
            last_flush = now
    out.write("\n")
    out.flush()


# -------------------------------------------------------------------- eval, info


@app.command("eval")
def eval_cmd(
    file: str = typer.Argument(..., help="Text to score, or - for stdin."),
    checkpoint: str = typer.Option("checkpoints/best.pt", "--checkpoint", "-c"),
    encoding: str = typer.Option("utf-8", help="Text encoding of FILE."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score a text: mean loss per character, in nats and bits."""
    _guarded(lambda: _eval(file, checkpoint, encoding, device, as_json))


def _eval(file: str, checkpoint: str, encoding: str, device_name: str, as_json: bool) -> None:
    device = resolve_device(device_name)
    ckpt = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(ckpt, checkpoint)
    text = read_text(file, encoding)
    for w in text.warnings:
        _warn(w)
    ids, missing = encode_in(vocab, text.text)
    if missing:
        raise UsageError(
            f"{text.name} has characters the model never saw: {describe_chars(missing)}; "
            "it can only score text made of its vocabulary"
        )
    if len(ids) < 2:
        raise UsageError(f"{text.name} needs at least 2 characters to score")
    model.to(device)
    loss = evaluate(model, ids, device)
    result = {
        "checkpoint": checkpoint,
        "file": text.name,
        "num_chars": len(text.text),
        "num_predicted": len(ids) - 1,  # every character but the first
        "loss_nats": loss,
        "bits_per_char": loss / LN2,
    }
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"{loss:.4f} nats/char ({loss / LN2:.4f} bits/char) over {result['num_predicted']:,} "
            f"predicted characters of {text.name}"
        )


@app.command("info")
def info_cmd(
    checkpoint: str = typer.Argument("checkpoints/best.pt", help="A checkpoint file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Describe a checkpoint: model, size, vocabulary, training options and progress."""
    _guarded(lambda: _info(checkpoint, as_json))


def _info(path: str, as_json: bool) -> None:
    ckpt = load_checkpoint(path)
    model, vocab = model_from_checkpoint(ckpt, path)
    best = ckpt.get("best_val_loss")
    history = ckpt.get("history") or []
    info = {
        "checkpoint": path,
        "format_version": ckpt["version"],
        "charrnn_version": ckpt.get("charrnn_version"),
        "model": model.config.to_dict(),  # with "input" filled in for older checkpoints
        "num_params": model.num_params(),
        "vocab_size": len(vocab),
        "vocab": "".join(vocab.chars),
        "train_config": ckpt.get("train_config"),
        "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"),
        "best_val_loss": best,
        "best_val_bpc": best / LN2 if best is not None else None,
        "last_val_loss": history[-1]["val_loss"] if history else None,
        "corpus": {k: v for k, v in (ckpt.get("corpus") or {}).items() if k != "first_char"},
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    m = info["model"]
    lines = [
        f"checkpoint   {path} (format {info['format_version']}, charrnn {info['charrnn_version']})",
        f"model        {m['model']}, {m['num_layers']} x {m['hidden_size']}, dropout "
        f"{m['dropout']}: {info['num_params']:,} parameters",
        f"input        {describe_input(model.config)}",
        f"vocabulary   {describe_vocab(vocab.chars)}",
        f"trained      {info['step']} steps ({info['epoch']} epochs) on "
        f"{info['corpus'].get('name', '?')} ({info['corpus'].get('num_chars', 0):,} chars)",
        "best val     "
        + (f"{best:.4f} nats/char ({best / LN2:.4f} bits/char)" if best is not None else "-"),
        "options      " + ", ".join(f"{k}={v}" for k, v in (info["train_config"] or {}).items()),
    ]
    typer.echo("\n".join(lines))


def main() -> None:
    app()
