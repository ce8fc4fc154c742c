"""charrnn as a Python library: what ``import charrnn`` offers.

    import charrnn
    model = charrnn.load("checkpoints/best.pt")           # CPU by default; device= to choose
    text = model.sample(seed="ROMEO:", length=200, temperature=0.8, random_seed=1)
    for piece in model.stream(seed="ROMEO:", length=0):    # an endless generator
        ...
    nats = model.score("To be, or not to be")             # mean nats/char, as `charrnn eval`
    result = charrnn.train("corpora/tinyshakespeare.txt", out="run", max_steps=200)

The command line is built on these same functions (cli.py only parses options and draws
progress), so the library and the CLI cannot disagree: the same checkpoint, seed and
options give the same text from both. Errors are charrnn's own exceptions
(`charrnn.errors`), never an exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import finetune
from .batches import min_train_chars
from .checkpoint import (
    check_resumable,
    load_checkpoint,
    model_config_from,
    model_from_checkpoint,
)
from .config import (
    INPUTS,
    LIMIT_OPTIONS,
    MODELS,
    PRECISIONS,
    RESUMABLE_OPTIONS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    parse_duration,
    plain_value,
)
from .corpus import corpus_from_prepared
from .device import resolve_device, resolve_precision
from .distributed import DistributedError, FollowerExit, World, check_batch
from .errors import CharRNNError, CorpusError, TrainingInterrupted, UsageError
from .idcache import prepare as prepare_ids
from .model import CharRNN
from .rundir import RunDir
from .sample import check_seed, generate
from .sources import check_encoding
from .sources import resolve as resolve_sources
from .training import Notice, StopRequest, TrainResult, evaluate
from .training import train as train_loop
from .vocab import Vocab, describe_chars, encode_in

_SAMPLE = SampleConfig()  # the defaults, defined once in config.py


class Model:
    """A trained char-RNN, ready to sample and score. Get one with `charrnn.load`."""

    def __init__(self, module: CharRNN, vocab: Vocab, checkpoint: dict[str, Any], path: str):
        self.module = module
        self.vocab = vocab
        self.checkpoint = checkpoint  # the whole checkpoint dict, as loaded
        self.path = path
        self.device = next(module.parameters()).device

    @property
    def config(self) -> ModelConfig:
        return self.module.config

    @property
    def default_seed(self) -> str:
        """The training text's first character (what `charrnn sample` starts from)."""
        return (self.checkpoint.get("corpus") or {}).get("first_char") or self.vocab.chars[0]

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<charrnn.Model {c.model} {c.num_layers}x{c.hidden_size}, {len(self.vocab)} "
            f"characters, from {self.path!r} on {self.device}>"
        )

    def generate(self, config: SampleConfig, seed: str | None = None) -> Iterator[tuple[int, str]]:
        """(sample number, text) pieces for `config.num_samples` samples, in output order:
        see `charrnn.sample.generate`."""
        seed = self.default_seed if seed is None else seed
        return generate(self.module, self.vocab, seed, config, self.device)

    def stream(
        self,
        seed: str | None = None,
        length: int = _SAMPLE.length,
        temperature: float = _SAMPLE.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        random_seed: int | None = None,
        stop_at: str | None = None,
    ) -> Iterator[str]:
        """The seed, then each generated character as it is drawn. `length=0` never ends;
        `stop_at` ends right after that text is generated. The arguments are checked here,
        not at the first `next()`."""
        options = (length, temperature, top_k, top_p, random_seed, stop_at)
        config, seed = self._sample_request(seed, *options)
        return (piece for _, piece in self.generate(config, seed))

    def sample(
        self,
        seed: str | None = None,
        length: int = _SAMPLE.length,
        temperature: float = _SAMPLE.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        random_seed: int | None = None,
        stop_at: str | None = None,
    ) -> str:
        """The seed and `length` generated characters, as one string."""
        options = (length, temperature, top_k, top_p, random_seed, stop_at)
        config, seed = self._sample_request(seed, *options)
        if config.length == 0:
            raise UsageError("length=0 never ends: use Model.stream for an endless sample")
        return "".join(piece for _, piece in self.generate(config, seed))

    def _sample_request(self, seed: Any, *options: Any) -> tuple[SampleConfig, str]:
        """The SampleConfig and seed of a sample() or stream() call, checked, with errors
        naming the arguments (temperature=, not the CLI's --temperature)."""
        length, temperature, top_k, top_p, random_seed, stop_at = options
        with _python_terms():
            config = SampleConfig(
                length=length,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                random_seed=random_seed,
                stop_at=stop_at,
            )
            seed = self.default_seed if seed is None else _text("seed", seed)
            check_seed(seed, self.vocab)
        return config, seed

    def score(self, text: str, name: str = "the text") -> float:
        """Mean cross-entropy in nats per character of predicting each character of `text`
        from all those before it, from a zero state (`charrnn eval`). `name` is what error
        messages call the text."""
        text, name = _text("text", text), _text("name", name)
        ids, missing = encode_in(self.vocab, text)
        if missing:
            raise CorpusError(
                f"{name} has characters the model never saw: {describe_chars(missing)}; "
                "it can only score text made of its vocabulary"
            )
        if len(ids) < 2:
            raise CorpusError(
                f"{name} has {len(ids)} character(s); scoring needs at least 2 (the first is "
                "only context)"
            )
        return evaluate(self.module, ids, self.device)


def load(path: str | os.PathLike[str], device: str = "cpu") -> Model:
    """Load a checkpoint (checked before anything is built) onto `device`: "cpu" (the
    fast numpy sampler), "cuda", "cuda:N", "mps" or "auto"."""
    path = _path("path", path)
    with _python_terms():  # `charrnn sample` checked --device before it got here
        where = resolve_device(_text("device", device))
    ckpt = load_checkpoint(path)
    module, vocab = model_from_checkpoint(ckpt, path)
    return Model(module.to(where), vocab, ckpt, path)


# --------------------------------------------------------------- Python's arguments


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name}= must be a str (got {_shown(value)})", name)
    return str(value)  # numpy's str_ as a plain str


def _path(name: str, value: Any) -> str:
    """A path argument as a str: os.PathLike (pathlib.Path) is welcome; bytes and numbers
    are not (open() takes an int for a file descriptor, and bytes iterate as ints)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(
            f"{name}= must be a path, a str or os.PathLike such as pathlib.Path "
            f"(got {_shown(value)})",
            name,
        )
    return str(value)


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} of type {type(value).__name__}"


# The arguments of charrnn.train, load and Model.sample that the CLI spells as flags.
_ARGUMENTS = {
    *(f.name for f in dataclasses.fields(ModelConfig)),
    *(f.name for f in dataclasses.fields(TrainConfig)),
    *(f.name for f in dataclasses.fields(SampleConfig)),
    *("corpus", "out", "resume", "force", "init_from", "encoding", "cache_dir", "seed"),
    "on_event",
}
_SWITCHES = ("resume", "force")  # the flags that are booleans: resume=True
_RENAMED = {"quiet": "on_event"}  # no events, no progress
# A flag, and the value that follows it: written by repr or a number ("--out 'run'",
# "--batch-size 5"), whose space goes; or one of the choices ("--device cpu"), quoted.
_CHOICES = "|".join(sorted({*MODELS, *INPUTS, *PRECISIONS, "cpu", "cuda", "mps"}, key=len)[::-1])
_FLAG = re.compile(
    r"(?<![\w/-])--(?P<flag>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
    rf"(?: (?:(?=['\"]|-?\d)|(?P<choice>cuda:\d+|{_CHOICES})\b))?"
)


def _in_python_terms(message: str) -> str:
    """A message for the command line, reworded for a Python caller: --max-steps 5 becomes
    max_steps=5 and --resume resume=True. Flags with no argument of that name stay."""

    def argument(match: re.Match[str]) -> str:
        name = match["flag"].replace("-", "_")
        name = _RENAMED.get(name, name)
        if name not in _ARGUMENTS:
            return match.group(0)
        if name in _SWITCHES:
            return f"{name}=True"
        return f"{name}={match['choice']!r}" if match["choice"] else f"{name}="

    return _FLAG.sub(argument, message)


@contextlib.contextmanager
def _python_terms() -> Iterator[None]:
    """charrnn's errors, as they leave a call from Python, in the caller's terms. The
    checks behind them are the CLI's too, which words them with its flags."""
    try:
        yield
    except CharRNNError as e:
        if len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (_in_python_terms(e.args[0]),)
        raise


# ----------------------------------------------------------------------------- train

# The model options a user gives (vocab_size comes from the corpus).
MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class Prepared:
    """The corpus is ready: its ids were built, or found in the cache (an event)."""

    num_files: int
    num_chars: int
    cached: bool
    seconds: float
    path: str  # the memory-mapped id file


def python_train(
    corpus: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "checkpoints",
    *,
    resume: bool = False,
    force: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    encoding: str = "utf-8",
    cache_dir: str | os.PathLike[str] | None = None,
    on_event: Callable[[Any], None] | None = None,
    stop: StopRequest | None = None,
    **options: Any,
) -> TrainResult:
    """`charrnn.train`: train a char-RNN on `corpus` (a path, a folder, "-" for stdin, or a
    list of them, joined in order; see charrnn.sources) into the folder `out`, as
    `charrnn train` does: `options` are its options with underscores (hidden_size=512,
    max_steps=1000, time_limit="5m" or seconds, ...). With `resume=True` the model and
    optimisation options come from `out`'s last.pt and only those in
    config.RESUMABLE_OPTIONS (the limits, eval_every, device, precision, sample_length)
    may be given.
    With `init_from` (a checkpoint), a new run starts from that model's weights and takes
    its model options; new characters extend its vocabulary (see charrnn.finetune).
    Progress arrives as events through `on_event`.

    Paths may be str or os.PathLike (pathlib.Path); numbers may be numpy's (np.int64,
    np.float32, np.linspace's floats; whole floats where an integer belongs) and are stored
    as plain int and float. A bool where a number belongs, bytes for a path, text where a
    number belongs or a `stop` that is not a StopRequest is refused before anything is
    written, with a UsageError (also a ValueError) that names the argument (lr=).

    Ctrl-C: called from the main thread without `stop`, the run finishes its step, saves
    last.pt as `charrnn train` does, and raises charrnn.TrainingInterrupted, a
    KeyboardInterrupt whose `result` is the TrainResult (`result.last_path`); continue with
    resume=True. Uncaught, it ends a script with a traceback that says where it saved and
    exit status 1 (Python keeps 130 for a plain KeyboardInterrupt). A second Ctrl-C, or
    one before training begins (nothing to save yet), raises KeyboardInterrupt at once.
    SIGTERM is met the same way, then ends the process by SIGTERM, as its default would
    (exit status 143). Only Python's default handlers are replaced, and only during the
    call. With `stop`, signals are the caller's: call `stop.set()` and the result comes
    back with `stop_reason` set.

    One run at a time in a process: torch's random generator and threads are global, so a
    charrnn.train in another thread while one runs is refused (UsageError). Run them one
    after another, or in separate processes.

    Returns the run's TrainResult (step, best and last validation loss, why it stopped,
    history) with `last_path` and `best_path` set. Raises charrnn.errors.CharRNNError.
    """
    with _python_terms():
        paths = _corpus_paths(corpus)
        out = _path("out", out)
        init_from = None if init_from is None else _path("init_from", init_from)
        cache_dir = None if cache_dir is None else _path("cache_dir", cache_dir)
        resume, force = _switch("resume", resume), _switch("force", force)
        encoding = _text("encoding", encoding)
        _check_hooks(on_event, stop)
        ours = stop is None  # the caller left signals to charrnn
        stop = StopRequest() if ours else stop
        with _stop_on_signals(stop) if ours else contextlib.nullcontext():
            request = dict(resume=resume, force=force, init_from=init_from, encoding=encoding)
            hooks = dict(cache_dir=cache_dir, on_event=on_event, stop=stop)
            result = train(paths, out, **request, **hooks, **options)
    if ours and result.stop_reason in ("SIGINT", "SIGTERM"):
        raise _interrupted(result, out)
    return result


def _corpus_paths(corpus: Any) -> list[str]:
    """corpus= as the list of str paths `charrnn train` gives: one path, or several."""
    if isinstance(corpus, str | os.PathLike):
        return [_path("corpus", corpus)]
    if isinstance(corpus, bytes | bytearray) or not isinstance(corpus, Iterable):
        # Iterated, bytes are ints, and open() takes an int as a file descriptor.
        fix = ": decode bytes to str first" if isinstance(corpus, bytes | bytearray) else ""
        raise UsageError(
            "corpus= must be a path (a str or os.PathLike such as pathlib.Path) or a list of "
            f"them (got {_shown(corpus)}){fix}",
            "corpus",
        )
    paths = [_path("corpus", path) for path in corpus]
    if not paths:
        raise UsageError("corpus= is empty: give one or more files or folders", "corpus")
    return paths


def _switch(name: str, value: Any) -> bool:
    if type(value).__name__ not in ("bool", "bool_"):  # resume="False" is true
        raise UsageError(f"{name}= must be True or False (got {_shown(value)})", name)
    return bool(value)


def _check_hooks(on_event: Any, stop: Any) -> None:
    if on_event is not None and not callable(on_event):
        raise UsageError(
            f"on_event= must be a function that takes an event (got {_shown(on_event)})",
            "on_event",
        )
    if stop is not None and not isinstance(stop, StopRequest):
        raise UsageError(
            f"stop= must be a charrnn.training.StopRequest (got {_shown(stop)})", "stop"
        )


# What Python does by default on these signals; charrnn.train replaces only those.
_DEFAULT_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@contextlib.contextmanager
def _stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """During the call, the first Ctrl-C or SIGTERM asks the loop to finish its step and
    save last.pt (the CLI's behaviour). Python runs handlers in the main thread only, and
    a script's own handler is the script's: neither is touched."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if not stop.armed or stop:  # nothing to save yet, or asked twice: stop at once
            if signum == signal.SIGTERM:
                _die_by_sigterm()
            raise KeyboardInterrupt
        stop.set(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, handler)
        for sig, default in _DEFAULT_HANDLERS.items()
        if signal.getsignal(sig) == default
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _die_by_sigterm() -> None:
    """End the process as SIGTERM's default does, so a batch scheduler sees it killed by
    SIGTERM (status 143) and not an exception."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)


def _interrupted(result: TrainResult, out: str) -> TrainingInterrupted:
    """After a signal's clean stop: SIGTERM ends the process as it would have (if its
    handler is still the default); for Ctrl-C, the exception to raise."""
    if result.stop_reason == "SIGTERM" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _die_by_sigterm()
    name = "Ctrl-C (SIGINT)" if result.stop_reason == "SIGINT" else result.stop_reason
    return TrainingInterrupted(
        f"charrnn.train was stopped by {name} at step {result.step} and saved "
        f"{result.last_path}; continue with charrnn.train(..., out={out!r}, resume=True)",
        result,
    )


# One charrnn.train at a time in a process: torch's random generator and thread settings
# are global, so two runs at once would draw each other's random numbers, and neither
# would be the run its seed promises.
_ONE_RUN = threading.Lock()
_running_in: list[str] = []  # the name of the thread that holds _ONE_RUN


@contextlib.contextmanager
def _one_run() -> Iterator[None]:
    if not _ONE_RUN.acquire(blocking=False):
        holder = "".join(_running_in) or "another"
        raise UsageError(
            f"another charrnn.train is running in this process (thread {holder}): run them "
            "one after another, or in separate processes"
        )
    _running_in[:] = [threading.current_thread().name]
    try:
        yield
    finally:
        _running_in.clear()
        _ONE_RUN.release()


def train(
    corpus: str | list[str],
    out: str = "checkpoints",
    *,
    resume: bool = False,
    force: bool = False,
    init_from: str | None = None,
    encoding: str = "utf-8",
    cache_dir: str | None = None,
    on_event: Callable[[Any], None] | None = None,
    stop: StopRequest | None = None,
    **options: Any,
) -> TrainResult:
    """What `charrnn train` runs: python_train's arguments as the CLI has them (str paths,
    its own `stop` and signal handlers), errors in the CLI's terms (--lr). Python code
    calls `charrnn.train` (python_train), which takes Python's habits, then this."""
    with _one_run():
        request = (corpus, out, resume, force, init_from, encoding, cache_dir, on_event, stop)
        return _train(*request, options)


def _train(
    corpus: str | list[str],
    out: str,
    resume: bool,
    force: bool,
    init_from: str | None,
    encoding: str,
    cache_dir: str | None,
    on_event: Callable[[Any], None] | None,
    stop: StopRequest | None,
    options: dict[str, Any],
) -> TrainResult:
    started = time.perf_counter()  # --time-limit counts preparation too
    # Under torchrun, this is one of several processes: rank 0 reads the checkpoints, owns
    # --out and reports; each machine's first process prepares the corpus's id file.
    world = World.from_env()
    request = (corpus, resume, force, init_from, encoding, options, world)
    given, encoding, paths = check_request(*request)
    emit = (on_event or (lambda event: None)) if world.is_main else (lambda event: None)
    model_kw = {k: v for k, v in given.items() if k in MODEL_OPTIONS}
    world.connect()
    run_dir = RunDir(out)
    try:
        source = None
        if init_from is not None:  # its model options; checked before touching the disk
            source = world.broadcast(
                world.together(lambda: load_checkpoint(init_from) if world.is_main else None)
            )
            source_model, source_vocab = model_from_checkpoint(source, init_from)
            model_kw = _model_options_from(source_model.config, init_from, model_kw)
        if not resume:
            train_config = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_OPTIONS})
        sources = world.together(lambda: resolve_sources(paths, encoding))

        def open_run() -> dict[str, Any] | None:
            if not world.is_main:
                return None
            run_dir.prepare(resume=resume, force=force)
            run_dir.lock()
            return load_checkpoint(run_dir.last) if resume else None

        ckpt = world.broadcast(world.together(open_run))
        if resume:
            model_config, train_config = resume_configs(*check_resumable(ckpt, run_dir.last), given)
            check_batch(train_config.batch_size, world)
        for notice in sources.notices:
            emit(Notice(notice))
        t0 = time.perf_counter()
        prepared = world.local_first(
            lambda: prepare_ids(sources, encoding, cache_dir, on_notice=lambda m: emit(Notice(m)))
        )
        for warning in prepared.warnings:
            emit(Notice(warning))
        emit(
            Prepared(
                len(prepared.files),
                prepared.num_chars,
                prepared.cached,
                time.perf_counter() - t0,
                prepared.path,
            )
        )
        # A run that began with --init-from has the vocabulary of its model, a superset of
        # its text's: its corpus is matched by content, then renumbered into that vocabulary.
        model_vocab = Vocab.from_list(ckpt["vocab"]) if ckpt else None
        fine_tuned = bool(ckpt and ckpt.get("lineage"))

        def open_corpus() -> Any:
            data = corpus_from_prepared(
                prepared,
                sources.name,
                train_config.val_fraction,
                min_train_chars(train_config.batch_size, train_config.seq_len),
                resume_record=ckpt.get("corpus") if ckpt else None,
                vocab=None if fine_tuned else model_vocab,
            )
            return finetune.in_vocab(data, model_vocab) if fine_tuned else data

        data = world.together(open_corpus)
        init = None
        if source is not None:
            data, init = _start_from(source, source_vocab, init_from, data, train_config, emit)
        if not resume:
            model_config = ModelConfig(**model_kw, vocab_size=len(data.vocab))
        result = train_loop(
            model_config, train_config, data, run_dir, emit, ckpt, stop, init, started, world
        )
    except Exception as e:
        if not isinstance(e, DistributedError | FollowerExit):
            world.note_failure(e)  # so rank 0 can name this process and its reason
        raise
    finally:
        run_dir.release()
        world.close()
    return dataclasses.replace(result, last_path=run_dir.last, best_path=run_dir.best)


def check_request(
    corpus: str | list[str],
    resume: bool,
    force: bool,
    init_from: str | None,
    encoding: str,
    options: dict[str, Any],
    world: World,
) -> tuple[dict[str, Any], str, list[str]]:
    """The checks of a train request that need no file but the corpus's name: the options
    typed (given, with durations parsed), the encoding's name, the corpus paths. Run by
    `charrnn train --nproc-per-node` too, before it starts any process."""
    unknown = sorted(set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for charrnn.train()")
    if resume and force:
        raise UsageError("--resume and --force contradict each other: choose one")
    if resume and init_from is not None:
        raise UsageError(
            "--init-from starts a new run from a model's weights; --resume continues the run "
            "in --out: choose one"
        )
    encoding = check_encoding(encoding)  # before the folder is touched or locked
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("time_limit"), str):
        given["time_limit"] = parse_duration(given["time_limit"])
    # Plain int, float and str from here on (numpy's numbers too): the resumed and
    # --init-from runs compare and store them without building a config from all of them.
    for name, value in given.items():
        given[name] = plain_value(
            ModelConfig if name in MODEL_OPTIONS else TrainConfig, name, value
        )
    if not resume:  # validate options before anything is connected or read
        TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_OPTIONS})
        if init_from is None:
            ModelConfig(**{k: v for k, v in given.items() if k in MODEL_OPTIONS}, vocab_size=2)
        check_batch(given.get("batch_size", TrainConfig.batch_size), world)
    device = resolve_device(given.get("device", TrainConfig.device))
    if "precision" in given or not resume:  # bf16 where there is none: refused up front
        resolve_precision(given.get("precision", TrainConfig.precision), device)
    paths = [corpus] if isinstance(corpus, str) else list(corpus)
    if world.launched and "-" in paths:
        raise UsageError(
            "CORPUS - (stdin) under torchrun: the processes cannot share one stdin; save the "
            "text to a file and give its path"
        )
    return given, encoding, paths


def _model_options_from(config: ModelConfig, path: str, typed: dict[str, Any]) -> dict[str, Any]:
    """The model options of an --init-from run are the checkpoint's; one typed differently
    is refused, not silently ignored."""
    for name, value in typed.items():
        if value != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {value!r} differs from the model in {path} ({getattr(config, name)!r}): "
                "--init-from takes the model from the checkpoint; drop the option"
            )
    return {name: getattr(config, name) for name in MODEL_OPTIONS}


def _start_from(
    source: dict[str, Any],
    old: Vocab,
    path: str,
    data: Any,
    train_config: TrainConfig,
    emit: Callable[[Any], None],
) -> tuple[Any, dict[str, Any]]:
    """The corpus in the extended vocabulary, and the transplanted weights."""
    vocab = finetune.union_vocab(old, data.vocab)
    added = [c for c in vocab.chars if c not in old]
    if added:
        emit(Notice(f"--init-from: {len(added)} new character(s) added: {describe_chars(added)}"))
    # A fresh model over the new vocabulary, initialised exactly as the run will be, gives
    # the new characters their weights.
    torch.manual_seed(train_config.random_seed)
    config = dataclasses.replace(model_config_from(source, path), vocab_size=len(vocab))
    fresh = CharRNN(config).state_dict()
    weights = finetune.transplant(source["model_state"], old, vocab, fresh)
    lineage = [*(source.get("lineage") or []), finetune.lineage_entry(path, source, added)]
    return finetune.in_vocab(data, vocab), {"model_state": weights, "lineage": lineage}


def resume_configs(
    model_config: ModelConfig, old: TrainConfig, given: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a resumed run: the checkpoint's, with only the options a resumed run
    may change; any other option that differs from the run's is refused."""
    for name, value in given.items():
        if name in RESUMABLE_OPTIONS:
            continue
        current = getattr(model_config, name, getattr(old, name, None))
        if value != current:
            flag = "--" + name.replace("_", "-")
            others = [
                f"--{o.replace('_', '-')}" for o in RESUMABLE_OPTIONS if o not in LIMIT_OPTIONS
            ]
            raise UsageError(
                f"{flag} cannot change on --resume (the run has {current!r}); only the limits, "
                f"{', '.join(others)} and --quiet can: drop it, or start over with --force"
            )
    changes = {k: given[k] for k in RESUMABLE_OPTIONS if k in given}
    if any(k in given for k in LIMIT_OPTIONS):  # new limits replace the old ones as a set
        for k in LIMIT_OPTIONS:
            changes.setdefault(k, None)
    return model_config, dataclasses.replace(old, **changes)
