"""charrnn as a Python library: what ``import charrnn`` offers.

    import charrnn
    model = charrnn.load("checkpoints/best.pt")           # CPU by default; device= to choose
    text = model.sample(seed="ROMEO:", length=200, temperature=0.8, random_seed=1)
    for piece in model.stream(seed="ROMEO:", length=0):    # an endless generator
        ...
    nats = model.score("To be, or not to be")             # mean nats/char, as `charrnn eval`
    result = charrnn.train("corpora/tinyshakespeare.txt", out="run", max_steps=200)

The command line is built on these same functions (charrnn.cli only parses options and
draws progress), so the library and the CLI cannot disagree: the same checkpoint, seed and
options give the same text from both. Errors are charrnn's own exceptions
(`charrnn.errors`), never an exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import finetune, pycall
from .batches import min_train_chars
from .checkpoint import (
    check_resumable,
    load_checkpoint,
    model_config_from,
    model_from_checkpoint,
)
from .config import ModelConfig, SampleConfig, TrainConfig
from .corpus import corpus_from_prepared
from .device import resolve_device
from .distributed import DistributedError, FollowerExit, World, check_batch
from .dynamic import DynamicConfig, as_dynamic_config, evaluate_dynamic
from .errors import CorpusError, UsageError
from .idcache import prepare as prepare_ids
from .model import CharRNN
from .request import MODEL_OPTIONS, TRAIN_OPTIONS, check_request, model_options_from, resume_configs
from .rundir import RunDir
from .sample import check_seed, check_stop, generate
from .sources import resolve as resolve_sources
from .training import Notice, StopRequest, TrainResult, evaluate
from .training import train as train_loop
from .training.choose import ModelChosen, choose_for_run, wants_choice
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
        with pycall.python_terms():
            config = SampleConfig(
                length=length,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                random_seed=random_seed,
                stop_at=stop_at,
            )
            seed = self.default_seed if seed is None else pycall.as_text("seed", seed)
            check_seed(seed, self.vocab)
            check_stop(config.stop_at, self.vocab)
        return config, seed

    def score(
        self, text: str, name: str = "the text", dynamic: bool | DynamicConfig = False
    ) -> float:
        """Mean cross-entropy in nats per character of predicting each character of `text`
        from all those before it, from a zero state (`charrnn eval`). `name` is what error
        messages call the text.

        `dynamic=True` (or a DynamicConfig): adapt to the text while scoring it, each segment
        scored, then learned from (`eval --dynamic`); this Model's weights stay as they are."""
        text, name = pycall.as_text("text", text), pycall.as_text("name", name)
        config = as_dynamic_config(dynamic)
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
        if config is not None:
            return evaluate_dynamic(self.module, ids, config, self.device)
        return evaluate(self.module, ids, self.device)


def load(path: str | os.PathLike[str], device: str = "cpu") -> Model:
    """Load a checkpoint (checked before anything is built) onto `device`: "cpu" (the
    fast numpy sampler), "cuda", "cuda:N", "mps" or "auto"."""
    path = pycall.as_path("path", path)
    with pycall.python_terms():  # `charrnn sample` checked --device before it got here
        where = resolve_device(pycall.as_text("device", device))
    ckpt = load_checkpoint(path)
    module, vocab = model_from_checkpoint(ckpt, path)
    return Model(module.to(where), vocab, ckpt, path)


# ----------------------------------------------------------------------------- train


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
    with pycall.python_terms():
        paths = pycall.corpus_paths(corpus)
        out = pycall.as_path("out", out)
        init_from = None if init_from is None else pycall.as_path("init_from", init_from)
        cache_dir = None if cache_dir is None else pycall.as_path("cache_dir", cache_dir)
        resume, force = pycall.as_switch("resume", resume), pycall.as_switch("force", force)
        encoding = pycall.as_text("encoding", encoding)
        _check_hooks(on_event, stop)
        ours = stop is None  # the caller left signals to charrnn
        stop = StopRequest() if ours else stop
        with pycall.stop_on_signals(stop) if ours else contextlib.nullcontext():
            request = dict(resume=resume, force=force, init_from=init_from, encoding=encoding)
            hooks = dict(cache_dir=cache_dir, on_event=on_event, stop=stop)
            result = train(paths, out, **request, **hooks, **options)
    if ours and result.stop_reason in ("SIGINT", "SIGTERM"):
        raise pycall.interrupted(result, out)
    return result


def _check_hooks(on_event: Any, stop: Any) -> None:
    if on_event is not None and not callable(on_event):
        raise UsageError(
            f"on_event= must be a function that takes an event (got {pycall.shown(on_event)})",
            "on_event",
        )
    if stop is not None and not isinstance(stop, StopRequest):
        raise UsageError(
            f"stop= must be a charrnn.training.StopRequest (got {pycall.shown(stop)})", "stop"
        )


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
    with pycall.one_run():
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
    world.connect()
    run_dir = RunDir(out)
    try:
        run = _Request(paths, given, encoding, resume, force, init_from, cache_dir)
        result = _run(run, world, run_dir, emit, stop, started)
    except Exception as e:
        if not isinstance(e, DistributedError | FollowerExit):
            world.note_failure(e)  # so rank 0 can name this process and its reason
        raise
    finally:
        run_dir.release()
        world.close()
    return dataclasses.replace(result, last_path=run_dir.last, best_path=run_dir.best)


@dataclass(frozen=True)
class _Request:
    """A checked train request, as _train hands it to _run."""

    paths: list[str]
    given: dict[str, Any]
    encoding: str
    resume: bool
    force: bool
    init_from: str | None
    cache_dir: str | None


def _run(
    r: _Request,
    world: World,
    run_dir: RunDir,
    emit: Callable[[Any], None],
    stop: StopRequest | None,
    started: float,
) -> TrainResult:
    """Open the run (new, resumed or from another model), prepare its corpus, train."""
    model_kw = {k: v for k, v in r.given.items() if k in MODEL_OPTIONS}
    source = None
    if r.init_from is not None:  # its model options; checked before touching the disk
        source = world.broadcast(
            world.together(lambda: load_checkpoint(r.init_from) if world.is_main else None)
        )
        source_model, source_vocab = model_from_checkpoint(source, r.init_from)
        model_kw = model_options_from(source_model.config, r.init_from, model_kw)
    if not r.resume:
        train_config = TrainConfig(**{k: v for k, v in r.given.items() if k in TRAIN_OPTIONS})
    sources = world.together(lambda: resolve_sources(r.paths, r.encoding))
    ckpt = world.broadcast(world.together(lambda: _open_run(world, run_dir, r.resume, r.force)))
    if r.resume:
        model_config, train_config = resume_configs(*check_resumable(ckpt, run_dir.last), r.given)
        check_batch(train_config.batch_size, world, resumed=True)
    for notice in sources.notices:
        emit(Notice(notice))
    prepared = _prepare(world, sources, r.encoding, r.cache_dir, emit)
    data = world.together(lambda: _open_corpus(prepared, sources.name, train_config, ckpt))
    init, choice = None, None
    if source is not None:
        data, init = _start_from(source, source_vocab, r.init_from, data, train_config, emit)
    elif not r.resume and wants_choice(r.given):
        choice = choose_for_run(r.given, train_config, data, world, started, always_time=False)
        model_kw = {**model_kw, **choice.model_options()}
        emit(ModelChosen(choice))
    if not r.resume:
        model_config = ModelConfig(**model_kw, vocab_size=len(data.vocab))
    record = choice.to_dict() if choice else None
    return train_loop(
        model_config, train_config, data, run_dir, emit, ckpt, stop, init, started, world, record
    )


def _open_run(world: World, run_dir: RunDir, resume: bool, force: bool) -> dict[str, Any] | None:
    """Rank 0 claims --out (and reads its last.pt on --resume); the others wait for it."""
    if not world.is_main:
        return None
    run_dir.prepare(resume=resume, force=force)
    run_dir.lock()
    return load_checkpoint(run_dir.last) if resume else None


def _prepare(
    world: World, sources: Any, encoding: str, cache_dir: str | None, emit: Callable[[Any], None]
) -> Any:
    """The corpus's id file, built or found in the cache, and the Prepared event."""
    t0 = time.perf_counter()
    prepared = world.local_first(
        lambda: prepare_ids(sources, encoding, cache_dir, on_notice=lambda m: emit(Notice(m)))
    )
    for warning in prepared.warnings:
        emit(Notice(warning))
    seconds = time.perf_counter() - t0
    emit(Prepared(len(prepared.files), prepared.num_chars, prepared.cached, seconds, prepared.path))
    return prepared


def _open_corpus(
    prepared: Any, name: str, train_config: TrainConfig, ckpt: dict[str, Any] | None
) -> Any:
    # A run that began with --init-from has the vocabulary of its model, a superset of
    # its text's: its corpus is matched by content, then renumbered into that vocabulary.
    model_vocab = Vocab.from_list(ckpt["vocab"]) if ckpt else None
    fine_tuned = bool(ckpt and ckpt.get("lineage"))
    data = corpus_from_prepared(
        prepared,
        name,
        train_config.val_fraction,
        min_train_chars(train_config.batch_size, train_config.seq_len),
        resume_record=ckpt.get("corpus") if ckpt else None,
        vocab=None if fine_tuned else model_vocab,
    )
    return finetune.in_vocab(data, model_vocab) if fine_tuned else data


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
