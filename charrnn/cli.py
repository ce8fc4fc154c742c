"""The command line: parse options, call one library function, report on stderr.

Only this module imports typer or rich. stdout carries nothing but the command's data
(generated text, eval/info results); progress, warnings and errors go to stderr.
Every CharRNNError leaves through `_fail`: one `error: ...` line and its exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console, Group
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from . import __version__, api
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import (
    DEFAULT_EPOCHS,
    MODELS,
    PRECISIONS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    describe_input,
)
from .corpus import read_text
from .device import resolve_device
from .distributed import LAUNCHER_ENV, DistributedError, FollowerExit, World, is_reporter
from .errors import CharRNNError, CheckpointError, CorpusError, OutputError, UsageError
from .idcache import CACHE_ENV
from .rundir import RunDir
from .sources import read_all
from .training import (
    LN2,
    MIN_VAL_STREAM,
    Evaluated,
    Notice,
    RunStarted,
    StepDone,
    StopRequest,
)
from .vocab import Vocab, describe_chars, describe_vocab

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion, typer's own
    no_args_is_help=True,
    help="Character-level RNN / LSTM / GRU: train on any text, sample into a pipeline.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class BestEffortStderr:
    """sys.stderr (whichever it is at the moment, as tests swap it) for rich, except that a
    write that fails (a full disk, a closed stream) turns our stderr output off instead of
    raising: a run never dies because its progress cannot be written."""

    def __init__(self) -> None:
        self.failure: str | None = None

    def _call(self, method: str, *args: Any) -> Any:
        stream = _underlying(sys.stderr)
        if self.failure is not None or stream is None:
            return None
        try:
            return getattr(stream, method)(*args)
        except (OSError, ValueError) as e:
            self.failure = getattr(e, "strerror", None) or str(e)
            _detach_stream(stream)
            return None

    def write(self, text: str) -> int:
        self._call("write", text)
        return len(text)

    def flush(self) -> None:
        self._call("flush")

    def isatty(self) -> bool:
        return bool(self._call("isatty"))

    def fileno(self) -> int:
        return _underlying(sys.stderr).fileno()

    @property
    def encoding(self) -> str:
        return getattr(_underlying(sys.stderr), "encoding", None) or "utf-8"


def _underlying(stream: Any) -> Any:
    """The stream beneath rich's redirection. While a `Live` display runs, sys.stderr may be
    its FileProxy, which prints through our console: writing there would feed the console
    its own output, forever (a hang that grows without bound)."""
    while isinstance(stream, FileProxy):
        stream = stream.rich_proxied_file
    return stream


def _detach_stream(stream: Any) -> None:
    """Point a failed standard stream's descriptor at /dev/null, so the interpreter's final
    flush of what it still buffers cannot fail again (which would change the exit status)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


stderr_stream = BestEffortStderr()
# soft_wrap: a log line stays one line in a file or pipe (rich would cut it at 80 columns).
# markup off: paths and corpus text may hold [brackets]; only our own labels are styled.
err = Console(file=stderr_stream, highlight=False, soft_wrap=True, markup=False)


class Stdout:
    """The command's data channel. A reader that went away (`| head`) ends the command
    quietly with status 0; any other failure to write (a full disk, a closed stdout) is
    an error line, never a traceback or a silent success."""

    def __init__(self) -> None:
        if sys.stdout is None:  # started with `>&-`
            raise OutputError(
                "stdout is closed, so the output would be lost: redirect it to a file or a "
                "pipe (e.g. > out.txt)"
            )
        self.stream = sys.stdout

    def write(self, text: str) -> None:
        self._do(self.stream.write, text)

    def flush(self) -> None:
        self._do(self.stream.flush)

    def print(self, text: str) -> None:
        self.write(text + "\n")
        self.flush()

    def _do(self, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as e:
            _detach_stream(self.stream)
            reason = getattr(e, "strerror", None) or str(e)
            raise OutputError(
                f"cannot write the output to stdout ({reason}): free some space or redirect "
                "it elsewhere"
            ) from None


def _examples(*commands: str) -> str:
    """A --help epilog: real commands, one per paragraph (typer keeps paragraphs)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {c}" for c in commands)


def _choices(names: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return complete


DEVICE_METAVAR = "[auto|cpu|cuda|cuda:N|mps]"


def _complete_device(incomplete: str) -> list[str]:
    import torch  # already loaded by charrnn's modules; only counting GPUs here

    names = ["auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return [n for n in [*names, "mps"] if n.startswith(incomplete)]


def _default(cls: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _fail(error: CharRNNError) -> NoReturn:
    # Under torchrun every process meets the same bad input: rank 0 alone says so.
    # Under charrnn's own launcher, the launcher names a process that died.
    unnamed = isinstance(error, DistributedError) and not error.named
    echo = not (unnamed and os.environ.get(LAUNCHER_ENV))
    if is_reporter() and echo and not isinstance(error, FollowerExit):
        err.print(f"[bold red]error:[/] {escape(str(error))}", markup=True)
    raise typer.Exit(code=error.exit_code)


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except CharRNNError as e:
        _fail(e)


def _printing(fn: Callable[[], Any]) -> None:
    """Run a command whose data goes to stdout: a closed pipe or Ctrl-C ends it quietly."""
    try:
        _guarded(fn)
    except BrokenPipeError:
        _quiet_exit(0)
    except KeyboardInterrupt:
        _quiet_exit(130)


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
        self.display: Live | None = None  # the bar, with the latest sample's panel below it
        self.panel: Panel | None = None
        self.task = None
        self.last_step: StepDone | None = None

    def __call__(self, event: Any) -> None:
        if isinstance(event, Notice):
            self.stop_live()
            _warn(event.message)
            return
        if self.quiet:
            return
        if isinstance(event, api.Prepared):
            how = "reused" if event.cached else "built"
            self.line(
                f"corpus: {event.num_files} file(s), {event.num_chars:,} characters; ids {how} "
                f"in {event.seconds:.1f}s ({event.path})"
            )
        if isinstance(event, RunStarted):
            self.started(event)
        elif isinstance(event, Evaluated):
            self.evaluated(event)
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
            f"{what} {e.step}: {e.num_params:,} parameters on {_where(e)} ({e.precision}); "
            f"{e.train_chars:,} training / {e.val_chars:,} validation characters"
            f"{_val_used(e)}, vocabulary {e.vocab_size:,} "
            f"({e.input.replace('onehot', 'one-hot')} input); {e.steps_per_epoch} steps per epoch; "
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
            self.panel = Panel(Text("(after the first evaluation)"), title="sample", expand=True)
            self.display = Live(
                Group(self.progress, self.panel),
                console=err,
                refresh_per_second=4,
                redirect_stdout=False,  # stdout is the data channel, never the display
            )
            self.display.start()

    def evaluated(self, e: Evaluated) -> None:
        self.val = f"{e.val_loss:.4f} ({e.val_bpc:.3f} bpc)"
        train = f"train loss {e.train_loss:.4f} | " if e.train_loss is not None else ""
        self.line(
            f"step {e.step} | epoch {e.epoch:.2f} | {train}val loss {e.val_loss:.4f} "
            f"nats/char, {e.val_bpc:.3f} bits/char{' (best)' if e.is_best else ''}"
        )
        if self.last_step is not None and self.progress is not None:
            # The run may end with this evaluation, with no step after it to redraw the
            # bar: refresh its stats now, or it keeps showing the previous val loss.
            self.progress.update(self.task, stats=self.stats(self.last_step))
        if e.sample is None:
            return
        if self.panel is not None:
            self.panel.renderable = Text(e.sample)
            self.panel.title = (
                f"sample at step {e.step} (temperature {_default(SampleConfig, 'temperature'):g})"
            )
        else:  # one line, newlines escaped, so each log message stays one line for grep
            err.print(f"step {e.step} | sample {json.dumps(e.sample, ensure_ascii=False)}")

    def stats(self, e: StepDone) -> str:
        return (
            f"epoch {e.epoch:.2f} | loss {e.loss:.4f} | val {self.val} | "
            f"{e.chars_per_sec:,.0f} chars/s | eta {_fmt_time(e.eta)}"
        )

    def step(self, e: StepDone) -> None:
        self.last_step = e
        stats = self.stats(e)
        if self.progress is not None:
            total = e.plan_steps
            self.progress.update(self.task, completed=e.step, total=total, stats=stats)
        elif e.elapsed - self.last_log >= self.log_every:
            self.last_log = e.elapsed
            err.print(f"step {e.step} | {stats} | grad norm {e.grad_norm:.3f} | lr {e.lr:.2e}")

    def line(self, text: str) -> None:
        if self.quiet:
            return
        err.print(text)  # above the live display while there is one

    def stop_live(self) -> None:
        if self.display is not None:
            self.display.stop()
            self.display = None
        self.progress = None
        self.panel = None


_signal_seen: list[str] = []  # the signal that stopped a run at once (this invocation's)


def _where(e: RunStarted) -> str:
    if e.processes == 1:
        return e.device
    kind = "GPUs" if e.device.startswith("cuda") else "CPU processes"
    return f"{e.processes} {kind} (DDP; rank 0 on {e.device})"


def _val_used(e: RunStarted) -> str:
    # Segments that cover the whole held-out text (a time-limited run's) predict all but
    # fewer than one character per MIN_VAL_STREAM: that is the whole text, not a bound.
    whole = e.val_chars - 1
    if e.val_used is None or e.val_used >= whole - whole // MIN_VAL_STREAM:
        return ""
    return f" ({e.val_used:,} of them predicted per validation: --val-chars)"


# Seconds a run may take, after the first SIGINT/SIGTERM, to finish its step and save before
# the process ends itself anyway: a stuck step, save or display can never keep a run alive.
STOP_GRACE_SECONDS = 20.0


def _install_stop_handlers(stop: StopRequest, out: str) -> Callable[[], None]:
    """First SIGINT/SIGTERM: finish the step, save, exit. A second Ctrl-C: stop at once.

    A watchdog thread backs the first: if the run has not ended within STOP_GRACE_SECONDS,
    it says so and ends the process (checkpoints are written to a temporary file and
    renamed, so the newest complete save is intact). Under torchrun the launcher keeps
    that watch over all the processes instead."""
    _signal_seen.clear()
    previous = {}
    ended = threading.Event()
    first: list[float] = []  # when this process was first signalled (not told by a peer)

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        # A second Ctrl-C is a person asking twice; a SIGTERM may come twice from machinery
        # (a parent-death signal, a launcher passing one on), and one Ctrl-C may arrive twice
        # within moments (from the terminal and from a launcher): neither is asked twice.
        again = bool(first) and name == "SIGINT" and time.monotonic() - first[0] > 0.5
        if not stop.armed or again:  # nothing to save yet, or asked twice: stop at once
            _signal_seen[:] = [name]
            raise KeyboardInterrupt
        if first:  # asked already: the run is stopping
            return
        first.append(time.monotonic())
        if not stop:  # under torchrun another process may have seen it first
            stop.set(name)
        if not World.from_env().launched:
            threading.Thread(target=_watchdog, args=(name, out, ended), daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        ended.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _watchdog(name: str, out: str, ended: threading.Event) -> None:
    if ended.wait(1.0):
        return
    # Runs beside the main thread, which may hold the console: a plain write to fd 2.
    _raw_stderr(f"{name}: stopping after this step and saving (press Ctrl-C again to stop now)")
    if ended.wait(STOP_GRACE_SECONDS - 1.0):
        return
    last = RunDir(out).last
    saved = f"{last} holds the newest save" if os.path.exists(last) else "nothing was saved"
    _raw_stderr(
        f"error: the run did not stop within {STOP_GRACE_SECONDS:g}s of {name}; ended it; {saved}"
    )
    os._exit(130 if name == "SIGINT" else 143)


def _raw_stderr(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, ("\n" + line + "\n").encode("utf-8", "replace"))


def _opt(cls: type, name: str, help: str, *flags: str, choices: tuple[str, ...] = ()) -> Any:
    """An option whose default is the dataclass field's: each default is defined once.
    With `choices`, --help lists them and the shell completes them (the config checks)."""
    if choices:
        return typer.Option(
            _default(cls, name),
            *flags,
            help=help,
            metavar="[" + "|".join(choices) + "]",
            autocompletion=_choices(choices),
        )
    return typer.Option(_default(cls, name), *flags, help=help)


@app.command(
    "train",
    epilog=_examples(
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
    model: str = _opt(ModelConfig, "model", "lstm, rnn (tanh) or gru.", choices=MODELS),
    hidden_size: int = _opt(ModelConfig, "hidden_size", "Units per layer."),
    num_layers: int = _opt(ModelConfig, "num_layers", "Stacked layers."),
    dropout: float = _opt(ModelConfig, "dropout", "Dropout between layers and before the output."),
    input: str = _opt(
        ModelConfig,
        "input",
        "onehot (x_t one-hot: W_xh itself, the notes' model), embedding (a learned E: "
        "W_xh = W_ih E, factored) or auto (the embedding: measured better at every size).",
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
    val_chars: int = _opt(
        TrainConfig, "val_chars", "Held-out characters each validation predicts, at most."
    ),
    precision: str = _opt(
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
    eval_every: int = _opt(TrainConfig, "eval_every", "Steps between validations and saves."),
    device: str = typer.Option(
        _default(TrainConfig, "device"),
        metavar=DEVICE_METAVAR,
        autocompletion=_complete_device,
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.",
    ),
    random_seed: int = _opt(TrainConfig, "random_seed", "Seed for initialisation and dropout."),
    sample_length: int = _opt(
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
    nproc_per_node: int = typer.Option(
        None,
        "--nproc-per-node",
        help="Train in this many processes on this machine (one per GPU; gloo on CPUs), "
        "started by torchrun's launcher; --batch-size is their total.",
    ),
) -> None:
    """Train a char-RNN on CORPUS, writing checkpoints to --out."""
    _unmute()
    # Only what was typed counts: on --resume the rest comes from the checkpoint.
    typed = {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")
    }
    given = {
        name: value
        for name, value in ctx.params.items()
        if name in typed and name in api.MODEL_OPTIONS + api.TRAIN_OPTIONS
    }
    if nproc_per_node is not None:
        request = (corpus, resume, force, init_from, encoding, given)
        _guarded(lambda: _launch(nproc_per_node, out, *request))
    try:
        _guarded(
            lambda: _train(corpus, out, given, encoding, resume, force, init_from, quiet, cache_dir)
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or a signal before training began
        last = RunDir(out).last
        saved = f"{last} holds the last save" if os.path.exists(last) else "nothing was saved"
        if is_reporter():
            err.print(f"stopped at once; {saved}")
        raise typer.Exit(code=143 if _signal_seen == ["SIGTERM"] else 130) from None


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
    from .launch import run_workers, unanswered_message
    from .sources import resolve as resolve_sources

    if World.from_env().launched:
        raise UsageError(
            "--nproc-per-node under torchrun: torchrun has already started the processes; "
            "drop the option (or run charrnn without torchrun)"
        )
    if nproc < 1:
        raise UsageError(f"--nproc-per-node must be at least 1 (got {nproc})")
    # What can be refused here is refused before N processes start (each would say it).
    world = World(size=nproc, local_size=nproc, launched=True)
    request = api.check_request(corpus_paths, resume, force, init_from, encoding, given, world)
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
    restore = _install_stop_handlers(stop, out)
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
        if _signal_seen:  # stopped at once part-way through something (a save, say)
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
            f"done: {result.step} steps, {result.epoch:.2f} epochs in "
            f"{_fmt_time(result.elapsed)} ({result.stop_reason.replace('_', ' ')}); best "
            f"validation loss {best_text}; checkpoints in {out}/{_unvalidated(result, out)}"
        )


def _unvalidated(result: Any, out: str) -> str:
    """When the newest model was saved without a validation, say so: `sample` reads best.pt."""
    validated = [r["step"] for r in result.history]
    if validated and validated[-1] == result.step:
        return ""
    last = RunDir(out).last
    return f" (the newest model, step {result.step}, is {last}: sample it with -c {last})"


# ------------------------------------------------------------------------ sample


@app.command(
    "sample",
    epilog=_examples(
        'charrnn sample -c checkpoints/best.pt --seed "ROMEO:" --length 300',
        "charrnn sample --length 0 --temperature 0.6 | head -c 100000 > more.txt",
        "cat prompt.txt | charrnn sample --seed-file - --stop-at '\\n\\n'",
    ),
)
def sample_cmd(
    checkpoint: str = typer.Option("checkpoints/best.pt", "--checkpoint", "-c"),
    seed: str = typer.Option(
        None,
        "--seed",
        "-s",
        help="Text to start from, printed first (default: the training text's first character).",
    ),
    seed_file: str = typer.Option(
        None, help="Read the seed from this file (- for stdin): a long prompt, printed first."
    ),
    length: int = typer.Option(
        _default(SampleConfig, "length"),
        "--length",
        "-n",
        help="Characters after the seed; 0 streams without end (until the reader stops).",
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
    stop_at: str = typer.Option(
        None, help="End each sample right after generating this text (escapes like \\n work)."
    ),
    num_samples: int = typer.Option(
        _default(SampleConfig, "num_samples"), help="Independent samples, generated together."
    ),
    separator: str = typer.Option(
        "\\n\\n", help="Printed between samples (escapes like \\n are understood)."
    ),
    random_seed: int = typer.Option(None, help="Seed for a repeatable sample."),
    device: str = typer.Option(
        "cpu",
        metavar=DEVICE_METAVAR,
        autocompletion=_complete_device,
        help="cpu (fastest for sampling; see README), cuda, cuda:N, mps or auto.",
    ),
) -> None:
    """Generate text from a checkpoint and stream it to stdout."""
    _printing(
        lambda: _sample(
            checkpoint,
            seed,
            seed_file,
            separator,
            device,
            SampleConfig(
                length=length,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                num_samples=num_samples,
                random_seed=random_seed,
                stop_at=None if stop_at is None else _unescape(stop_at, "--stop-at"),
            ),
        )
    )


def _unescape(typed: str, flag: str) -> str:
    """Backslash escapes (\\n, \\t, \\u2014) become their characters; every other character
    stays exactly as typed, '—' and 'é' included."""
    # latin-1 + backslashreplace turns the non-latin-1 characters into \\uXXXX escapes, which
    # unicode_escape (it reads its bytes as latin-1) turns back: nothing is double-decoded.
    try:
        text = typed.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise UsageError(
            f"{flag} {typed!r} has a broken backslash escape: write \\n, \\t or \\\\"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{flag} {typed!r} holds a lone surrogate (half of a UTF-16 pair), which "
            "cannot be printed: give a real character"
        ) from None
    return text


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
    checkpoint: str,
    seed: str | None,
    seed_file: str | None,
    separator: str,
    device_name: str,
    config: SampleConfig,
) -> None:
    if seed is not None and seed_file is not None:
        raise UsageError("--seed and --seed-file both give the seed: choose one")
    device = "cpu" if device_name == "auto" else device_name  # README: the CPU samples fastest
    resolve_device(device)
    separator = _unescape(separator, "--separator")
    out = Stdout()
    model = api.load(checkpoint, device)
    if seed_file is not None:
        seed = _read_seed(seed_file, model.vocab)
    current = 0
    unflushed = 0
    last_flush = time.monotonic()
    for index, text in model.generate(config, seed):
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


def _read_seed(path: str, vocab: Vocab) -> str:
    """The whole text of a --seed-file (or of stdin for -) is the seed; every character must
    be in the vocabulary, since the model has no input for any other."""
    name = "<stdin>" if path == "-" else path
    text, warnings = read_all(path, "utf-8", role="--seed-file")  # a corpus's own checks
    for w in warnings:
        _warn(w)
    if not text:
        raise CorpusError(f"--seed-file {name} is empty: give it the text to start from")
    missing = vocab.missing(text)
    if missing:
        raise CorpusError(
            f"--seed-file {name} has characters the model never saw: {describe_chars(missing)}; "
            "remove them, or use a model trained on text that has them"
        )
    return text


# -------------------------------------------------------------------- eval, info


@app.command(
    "eval",
    epilog=_examples(
        "tail -c 111539 corpora/tinyshakespeare.txt > held_out.txt",
        "charrnn eval --checkpoint checkpoints/best.pt held_out.txt",
        "charrnn sample -n 5000 | charrnn eval - --json",
    ),
)
def eval_cmd(
    file: str = typer.Argument(..., help="Text to score, or - for stdin."),
    checkpoint: str = typer.Option("checkpoints/best.pt", "--checkpoint", "-c"),
    encoding: str = typer.Option("utf-8", help="Text encoding of FILE."),
    device: str = typer.Option(
        "auto",
        metavar=DEVICE_METAVAR,
        autocompletion=_complete_device,
        help="auto, cpu, cuda, cuda:N or mps.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score a text: mean loss per character, in nats and bits."""
    _printing(lambda: _eval(file, checkpoint, encoding, device, as_json))


def _eval(file: str, checkpoint: str, encoding: str, device_name: str, as_json: bool) -> None:
    resolve_device(device_name)
    out = Stdout()
    model = api.load(checkpoint, device_name)
    text = read_text(file, encoding, role="text")
    for w in text.warnings:
        _warn(w)
    loss = model.score(text.text, name=text.name)
    result = {
        "checkpoint": checkpoint,
        "file": text.name,
        "num_chars": len(text.text),
        "num_predicted": len(text.text) - 1,  # every character but the first
        "loss_nats": loss,
        "bits_per_char": loss / LN2,
    }
    if as_json:
        out.print(json.dumps(result))
    else:
        out.print(
            f"{loss:.4f} nats/char ({loss / LN2:.4f} bits/char) over {result['num_predicted']:,} "
            f"predicted characters of {text.name}"
        )


@app.command(
    "info",
    epilog=_examples("charrnn info checkpoints/best.pt", "charrnn info run/last.pt --json"),
)
def info_cmd(
    checkpoint: str = typer.Argument("checkpoints/best.pt", help="A checkpoint file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Describe a checkpoint: model, size, vocabulary, training options and progress."""
    _printing(lambda: _info(checkpoint, as_json))


def _info(path: str, as_json: bool) -> None:
    out = Stdout()
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
        "lineage": ckpt.get("lineage") or [],
    }
    if as_json:
        try:
            text = json.dumps(info, indent=2, allow_nan=False)  # bare NaN is not JSON
        except ValueError:
            raise CheckpointError(
                f"checkpoint {path!r} is damaged (its options hold a NaN or infinite number)"
            ) from None
        out.print(text)
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
        *_files_line(info["corpus"]),
        "best val     "
        + (f"{best:.4f} nats/char ({best / LN2:.4f} bits/char)" if best is not None else "-"),
        "options      " + ", ".join(f"{k}={v}" for k, v in (info["train_config"] or {}).items()),
    ]
    for entry in info["lineage"]:
        added = entry.get("added_chars") or ""
        lines.append(
            f"started from {entry['init_from']} (step {entry.get('step')}, trained on "
            f"{entry.get('corpus') or '?'}); added {len(added)} character(s)"
            + (f": {describe_chars(list(added))}" if added else "")
        )
    out.print("\n".join(lines))


def _files_line(corpus: dict[str, Any]) -> list[str]:
    files = corpus.get("files")
    if not isinstance(files, list) or not files:
        return []
    shown = ", ".join(
        f"{f.get('name')} ({f.get('size', 0):,} bytes)" for f in files[:5] if isinstance(f, dict)
    )
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return [f"files        {len(files)}: {shown}{more}"]


def main() -> None:
    # Generated text may hold any character: write UTF-8 whatever the locale says
    # (PYTHONIOENCODING=ascii would otherwise crash on the first emoji).
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure"):
            with contextlib.suppress(OSError, ValueError):
                stream.reconfigure(encoding="utf-8")
    if not is_reporter():
        # Another process of a torchrun launch: rank 0 reports a bad command line, once;
        # this one speaks again (if it fails on its own) once its command has begun.
        _muted.append(sys.stderr)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    app()


_muted: list[Any] = []  # stderr, while a non-reporting process parses its command line


def _unmute() -> None:
    if _muted:
        sys.stderr = _muted.pop()


# The inspection commands (plot, neurons, gradients, novelty) live in their own module;
# importing it registers them on `app`.
from . import cli_inspect  # noqa: E402, F401
