"""`train()`: put a run together (what it trains with, its budget, run state and
evaluator), run the loop, end it (a final validation, the stopping save) and report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..batches import min_train_chars
from ..config import ModelConfig, TrainConfig
from ..corpus import Corpus
from ..device import resolve_device
from ..distributed import World
from ..memory import check_memory
from ..rundir import RunDir
from ..threads import thread_policy
from .budget import Budget
from .evaluator import Evaluator
from .events import RunStarted, StopRequest, TrainResult
from .loop import Run, agree, train_loop
from .prepare import prepare
from .state import RunState


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    corpus: Corpus,
    run_dir: RunDir,
    on_event: Callable[[Any], None] | None = None,
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    init: dict[str, Any] | None = None,
    started: float | None = None,
    world: World | None = None,
    choice: dict[str, Any] | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) a char-RNN on `corpus`, saving into `run_dir`.

    `init` ({"model_state", "lineage"}) starts a new run from given weights (--init-from).

    `model_config.vocab_size` must match the corpus. The caller has prepared and locked
    `run_dir`. Returns when a limit is reached or `stop` is set; raises TrainingError if
    the loss stays non-finite. `started` (a time.perf_counter() value) is when the
    invocation began, for --time-limit; by default, now. `world`: the processes of a
    torchrun launch (by default this one alone). `choice`: how charrnn chose the model's
    size, for the checkpoint (sizing.Choice.to_dict()).
    """
    needed = min_train_chars(config.batch_size, config.seq_len)
    if len(corpus.train) < needed:
        raise ValueError(f"the training text needs at least {needed} characters")
    # Refuse a run that cannot fit before allocating any of it (ResourceError).
    check_memory(model_config, config, resolve_device(config.device))
    emit = on_event or (lambda event: None)
    stop = stop if stop is not None else StopRequest()
    request = (model_config, config, corpus, run_dir, emit, resume, stop, init, world, choice)
    run = _assemble(*request)
    try:
        with thread_policy(config.threads, run.parts.device.type == "cpu") as run.pilot:
            return _run(run, started)
    finally:
        # DDP holds the process group and gloo's worker threads: let them go now, while the
        # interpreter is whole (destroyed at exit instead, they can abort the process).
        run.parts.net = run.parts.model


def _assemble(
    model_config: ModelConfig,
    config: TrainConfig,
    corpus: Corpus,
    run_dir: RunDir,
    emit: Callable[[Any], None],
    resume: dict[str, Any] | None,
    stop: StopRequest,
    init: dict[str, Any] | None,
    world: World | None,
    choice: dict[str, Any] | None = None,
) -> Run:
    weights = resume if resume is not None else init  # init: weights only, a new run
    parts = prepare(model_config, config, corpus, world or World(), weights, emit, resume)
    # Where the weights came from: the --init-from checkpoints, oldest first.
    lineage = list((resume or {}).get("lineage") or (init or {}).get("lineage") or [])
    budget = Budget(config, parts.streams.windows_per_epoch)
    state = RunState(parts, config, corpus, run_dir, budget, lineage, choice)
    evaluator = Evaluator(config, corpus, run_dir, state, budget, stop, emit)
    budget.watch(evaluator)
    if resume is not None:
        state.restore(resume)
    return Run(config, parts, state, budget, evaluator, stop, emit)


def _run(run: Run, started: float | None) -> TrainResult:
    p, budget, state, evaluator = run.state.progress, run.budget, run.state, run.evaluator
    if budget.finished(p.step):  # a resumed run at its limit: change nothing, save nothing
        return _result(run, "already_done", 0.0)
    run.stop.armed = True
    run.emit(_started(run))
    budget.begin(p.step, started)
    evaluator.resumed()
    run.parts.model.train()
    signal, decision = train_loop(run)
    if not signal and evaluator.needs_final():  # a run ends with a validated step
        elapsed = budget.elapsed()
        state.collect()
        evaluator.validate(elapsed, final=True)  # if interrupted part-way, saved below
        signal, _ = agree(run, None)
    if signal:
        state.collect()
        state.save(also_best=False)  # no evaluation: stop as fast as asked
    state.share()  # every process returns what rank 0 measured
    return _result(run, signal or decision, budget.elapsed())


def _started(run: Run) -> RunStarted:
    p, parts, corpus = run.state.progress, run.parts, run.evaluator.corpus
    return RunStarted(
        step=p.step,
        resumed=p.step > 0 or bool(p.history),
        num_params=parts.model.num_params(),
        device=str(parts.device),
        precision=parts.precision,
        steps_per_epoch=parts.streams.windows_per_epoch,
        limit_steps=run.budget.limit,
        time_limit=run.config.time_limit,
        train_chars=len(corpus.train),
        val_chars=len(corpus.val),
        vocab_size=len(corpus.vocab),
        val_used=run.evaluator.val_used,
        input=parts.model.config.input,
        processes=parts.world.size,
        best_val=p.best_val,
    )


def _result(run: Run, stop_reason: str, elapsed: float) -> TrainResult:
    p = run.state.progress
    return TrainResult(
        step=p.step,
        epoch=p.fractional_epoch(run.parts.streams.windows_per_epoch),
        best_val_loss=p.best_val,
        last_val_loss=p.last_val,
        stop_reason=stop_reason,
        elapsed=elapsed,
        history=p.history,
    )
