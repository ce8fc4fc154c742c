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

import dataclasses
import time
from collections.abc import Callable, Iterator
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
    LIMIT_OPTIONS,
    RESUMABLE_OPTIONS,
    ModelConfig,
    SampleConfig,
    TrainConfig,
    parse_duration,
)
from .corpus import corpus_from_prepared
from .device import resolve_device
from .distributed import DistributedError, FollowerExit, World, check_batch
from .errors import CorpusError, UsageError
from .idcache import prepare as prepare_ids
from .model import CharRNN
from .rundir import RunDir
from .sample import generate
from .sources import check_encoding
from .sources import resolve as resolve_sources
from .trainer import Notice, StopRequest, TrainResult, evaluate
from .trainer import train as train_loop
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
        `stop_at` ends right after that text is generated."""
        config = SampleConfig(
            length=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            random_seed=random_seed,
            stop_at=stop_at,
        )
        for _, piece in self.generate(config, seed):
            yield piece

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
        if length == 0:
            raise UsageError("length=0 never ends: use Model.stream for an endless sample")
        return "".join(self.stream(seed, length, temperature, top_k, top_p, random_seed, stop_at))

    def score(self, text: str, name: str = "the text") -> float:
        """Mean cross-entropy in nats per character of predicting each character of `text`
        from all those before it, from a zero state (`charrnn eval`). `name` is what error
        messages call the text."""
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


def load(path: str, device: str = "cpu") -> Model:
    """Load a checkpoint (checked before anything is built) onto `device`: "cpu" (the
    fast numpy sampler), "cuda", "cuda:N", "mps" or "auto"."""
    where = resolve_device(device)
    ckpt = load_checkpoint(path)
    module, vocab = model_from_checkpoint(ckpt, path)
    return Model(module.to(where), vocab, ckpt, path)


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
    """Train a char-RNN on `corpus` (a path, a folder, "-" for stdin, or a list of them,
    joined in order; see charrnn.sources) into the folder `out`, as
    `charrnn train` does: `options` are its options with underscores (hidden_size=512,
    max_steps=1000, time_limit="5m" or seconds, ...). With `resume=True` the model and
    optimisation options come from `out`'s last.pt and only those in
    config.RESUMABLE_OPTIONS (the limits, eval_every, device, sample_length) may be given.
    With `init_from` (a checkpoint), a new run starts from that model's weights and takes
    its model options; new characters extend its vocabulary (see charrnn.finetune).
    Progress arrives as events through `on_event`.

    Returns the run's TrainResult (step, best and last validation loss, why it stopped,
    history) with `last_path` and `best_path` set. Raises charrnn.errors.CharRNNError.
    """
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
    if not resume:  # validate options before anything is connected or read
        TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_OPTIONS})
        if init_from is None:
            ModelConfig(**{k: v for k, v in given.items() if k in MODEL_OPTIONS}, vocab_size=2)
        check_batch(given.get("batch_size", TrainConfig.batch_size), world)
    resolve_device(given.get("device", TrainConfig.device))
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
