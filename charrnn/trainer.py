"""The training loop: truncated BPTT over parallel streams, Adam, clipping, checkpoints.

Nothing here prints or knows about terminals: progress leaves through `on_event`, a
callback that receives the small event objects below (minGPT's trainer callbacks), so
the CLI can draw a progress bar and tests can run `train()` silently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from .batches import Streams, make_streams, min_train_chars, shard_span
from .checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    commit_checkpoint,
    discard_temporary,
    trained_precision,
    write_temporary,
)
from .config import DEFAULT_EPOCHS, ModelConfig, SampleConfig, TrainConfig
from .corpus import Corpus
from .device import autocast, bf16_missing, configure_backends, resolve_device, resolve_precision
from .distributed import World, is_lost_peer, lost_contact
from .errors import CheckpointError, OutputError, TrainingError
from .loss import cross_entropy
from .memory import EVAL_LOGITS_BYTES, check_memory
from .model import CharRNN, Hidden, detach_hidden, hidden_from_list, hidden_to_list
from .rundir import RunDir
from .sample import generate

LN2 = math.log(2.0)

# A time-limited run measures this many steps, then plans its learning-rate decay to end
# when the time does; it re-plans from the measured speed at every evaluation and at least
# every REPLAN_SECONDS.
CALIBRATION_STEPS = 20
REPLAN_SECONDS = 10.0
# Consecutive non-finite steps tolerated (each skipped) before the run is stopped.
MAX_BAD_STEPS = 5
# Validation streams are at least this long, so starting each from a zero state costs a
# negligible amount of context (<0.001 nats/char on Tiny Shakespeare's 111k characters).
MIN_VAL_STREAM = 16384
# With --time-limit, one validation of a big held-out text (beyond --val-chars) takes at
# most this share of the limit: its segments are shortened at the first validation if
# needed, so that a busy or slow machine still spends its time on training steps.
VAL_TIME_SHARE = 0.05
# A time-limited run stops training this many times the last validation's duration (its
# save included) before the limit, so the final validation and save fit even when the
# machine has slowed down since: a run that ends without one leaves best.pt behind last.pt.
FINAL_MARGIN = 1.5


# ---------------------------------------------------------------------------- events


@dataclass
class RunStarted:
    step: int  # 0, or the step resumed from
    resumed: bool
    num_params: int
    device: str
    precision: str
    steps_per_epoch: int
    limit_steps: int | None  # from --max-steps / --epochs (or the default epochs)
    time_limit: float | None
    train_chars: int
    val_chars: int
    vocab_size: int
    val_used: int | None = None  # held-out characters each evaluation predicts (the bound)
    input: str = "onehot"  # ModelConfig.input, resolved: "onehot" or "embedding"
    processes: int = 1  # torchrun's world size: the processes training together


@dataclass
class StepDone:
    step: int
    epoch: float  # fractional: epochs completed plus the part of this one
    loss: float  # nats/char of this window
    grad_norm: float  # global L2 norm before clipping
    lr: float
    chars_per_sec: float
    elapsed: float  # seconds of this invocation
    eta: float | None  # seconds to the end, when it can be known
    plan_steps: int | None


@dataclass
class Evaluated:
    step: int
    epoch: float
    val_loss: float  # nats/char
    val_bpc: float  # bits/char
    is_best: bool
    elapsed: float
    train_loss: float | None = None  # mean over the windows since the previous evaluation
    sample: str | None = None  # fixed-seed sample, comparable across evaluations


@dataclass
class Notice:
    message: str


@dataclass
class TrainResult:
    step: int
    epoch: float
    best_val_loss: float | None
    last_val_loss: float | None
    # "max_steps" | "epochs" | "time_limit" | "interrupted" | "SIGINT" | "SIGTERM", or
    # "already_done": a resumed run that had reached its limit (nothing was changed)
    stop_reason: str
    elapsed: float
    history: list[dict[str, Any]] = field(default_factory=list)
    last_path: str | None = None  # the run's checkpoints (set by charrnn.train())
    best_path: str | None = None


class StopRequest:
    """Set from a signal handler; the loop checks it between steps and stops cleanly."""

    def __init__(self) -> None:
        self.reason: str | None = None
        # Set once training has begun: a signal before then has nothing to save, so the
        # CLI's handler ends the process at once instead.
        self.armed = False

    def set(self, reason: str = "interrupted") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None


# ------------------------------------------------------------------------ schedule


def learning_rate(step: int, config: TrainConfig, plan_steps: int | None) -> float:
    """Linear warm-up, then cosine decay to lr * lr_min_ratio at `plan_steps`.

    It depends only on the step and the run's planned length, so a resumed run follows
    exactly the curve of one that was never stopped.
    """
    peak = config.lr
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if plan_steps is None:
        return peak
    span = max(1, plan_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = peak * config.lr_min_ratio
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def limit_steps(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """The step count --max-steps and --epochs allow (None: only a time limit is set)."""
    limits = []
    if config.max_steps is not None:
        limits.append(config.max_steps)
    epochs = config.epochs
    if epochs is None and config.max_steps is None and config.time_limit is None:
        epochs = DEFAULT_EPOCHS
    if epochs is not None:
        limits.append(max(1, math.ceil(epochs * steps_per_epoch)))
    return min(limits) if limits else None


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """Scale all gradients together by max_norm / norm when their global L2 norm exceeds
    max_norm (0 = never): the update keeps its direction, only an exploding step is
    shortened. Returns the norm before clipping."""
    clip = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, clip))


# ---------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: CharRNN,
    ids: torch.Tensor,
    device: torch.device,
    num_streams: int = 1,
    chunk_len: int = 1024,
    stop: StopRequest | None = None,
    deadline: float | None = None,
) -> float | None:
    """Mean cross-entropy (nats/char) of predicting ids[1:] from what precedes each.

    The text is cut into `num_streams` contiguous streams (1 = exactly "every character
    from all those before it"); each starts from a zero state, which is carried through
    its stream. Returns None if `stop` is set part-way or the time.perf_counter()
    `deadline` passes. `chunk_len` is an upper bound: for a large vocabulary the chunks are
    shorter (EVAL_LOGITS_BYTES), which changes nothing but the memory, since the state is
    carried across chunks.
    """
    was_training = model.training
    model.eval()
    try:
        n = len(ids) - 1
        chunk_len = eval_chunk_len(num_streams, model.config.vocab_size, chunk_len)
        stream_len = n // num_streams
        used = stream_len * num_streams
        x_all = ids[:used].view(num_streams, stream_len).to(device)  # (S, L)
        y_all = ids[1 : used + 1].view(num_streams, stream_len).to(device)  # (S, L)
        scored = _score_streams(model, x_all, y_all, chunk_len, stop, deadline)
        if scored is None:
            return None
        total = scored[0]
        tail: Hidden | None = None
        for start in range(used, n, chunk_len):  # the part that did not divide evenly
            end = min(n, start + chunk_len)
            x = ids[start:end].view(1, -1).to(device).long()
            y = ids[start + 1 : end + 1].view(1, -1).to(device).long()
            logits, tail = model(x, tail)
            total += F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            ).double()
        return total.item() / n
    finally:
        model.train(was_training)


def _score_streams(
    model: CharRNN,
    x_all: torch.Tensor,  # (S, L) inputs, one stream per row
    y_all: torch.Tensor,  # (S, L) targets
    chunk_len: int,
    stop: StopRequest | None,
    deadline: float | None = None,
    budget_s: float | None = None,
) -> tuple[torch.Tensor, int] | None:
    """Summed cross-entropy over the streams, the state carried along each, and how many
    columns were scored: all of them, or (with `budget_s`) those of the chunks begun
    within that many seconds. None if stopped or past the deadline."""
    total = torch.zeros((), dtype=torch.float64, device=x_all.device)
    hidden: Hidden | None = None
    began = time.perf_counter()
    cols = 0
    chunk_took = 0.0
    for start in range(0, x_all.shape[1], chunk_len):
        t0 = time.perf_counter()
        # A chunk that would end past the deadline is not begun (it is as long as the last).
        if stop or (deadline is not None and t0 + chunk_took > deadline):
            return None
        # Within the budget, a chunk is begun only if it can end in it (as long as the last).
        if budget_s is not None and cols and t0 + chunk_took - began > budget_s:
            break
        x = x_all[:, start : start + chunk_len].long()
        y = y_all[:, start : start + chunk_len].long()
        logits, hidden = model(x, hidden)
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).double()
        cols = start + x.shape[1]
        chunk_took = time.perf_counter() - t0
    return total, cols


def eval_chunk_len(num_streams: int, vocab_size: int, chunk_len: int = 1024) -> int:
    """The longest chunk <= chunk_len whose (S, chunk, V) float32 logits fit EVAL_LOGITS_BYTES."""
    return max(1, min(chunk_len, EVAL_LOGITS_BYTES // (4 * num_streams * vocab_size)))


def val_streams(num_chars: int) -> int:
    return max(1, min(64, num_chars // MIN_VAL_STREAM))


def val_segments(ids: torch.Tensor, max_chars: int, whole: bool = False) -> torch.Tensor | None:
    """At most `max_chars` held-out characters to predict, as evenly spaced segments.

    None when the held-out text is within the bound (it is then used whole), unless
    `whole`: then segments that cover all of it (a validation that can be cut short to fit
    a time limit, since a segment's columns can be dropped from the end). Otherwise
    (S, L + 1) rows: S = val_streams(max_chars) segments of L + 1 characters spread evenly
    from the start of `ids` to its end, each scored from a zero state carried along it,
    so a bounded evaluation sees every part of the held-out text, not only its beginning.
    Copies at most max_chars + S ids (the mapped corpus is not read beyond them).
    """
    if len(ids) - 1 <= max_chars:
        if not whole:
            return None
        max_chars = len(ids) - 1
    num = val_streams(max_chars)
    seg = max_chars // num
    last = len(ids) - seg - 1  # the latest start that leaves a whole segment
    # Integer arithmetic: float32 linspace rounds starts past `last` beyond 2**24 ids.
    starts = [i * last // max(1, num - 1) for i in range(num)]
    return torch.stack([ids[a : a + seg + 1] for a in starts])  # (S, L + 1)


@torch.no_grad()
def evaluate_segments(
    model: CharRNN,
    rows: torch.Tensor,
    device: torch.device,
    stop: StopRequest | None = None,
    deadline: float | None = None,
    budget_s: float | None = None,
) -> tuple[float, int] | None:
    """Mean cross-entropy (nats/char) of predicting rows[:, 1:] from rows[:, :-1], and the
    number of columns scored (fewer than rows.shape[1] - 1 only when `budget_s` ran out:
    the loss is then over rows[:, : cols + 1])."""
    was_training = model.training
    model.eval()
    try:
        rows = rows.to(device)
        # Chunks of at most 256 columns: fine-grained enough for the deadline and the
        # budget; fewer for a large vocabulary (EVAL_LOGITS_BYTES).
        chunk_len = eval_chunk_len(rows.shape[0], model.config.vocab_size, 256)
        scored = _score_streams(
            model, rows[:, :-1], rows[:, 1:], chunk_len, stop, deadline, budget_s
        )
        if scored is None:
            return None
        total, cols = scored
        return total.item() / (rows.shape[0] * cols), cols
    finally:
        model.train(was_training)


# -------------------------------------------------------------------------- the run


class _Run:
    """The state of one training invocation; `train()` below is its public face."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        corpus: Corpus,
        run_dir: RunDir,
        on_event: Callable[[Any], None],
        resume: dict[str, Any] | None,
        stop: StopRequest,
        init: dict[str, Any] | None = None,
        started: float | None = None,
        world: World | None = None,
    ):
        self.config = config
        # The processes of a torchrun launch (World(): this one alone).
        self.world = world = world or World()
        self.started = started
        self.deadline: float | None = None  # perf_counter() time --time-limit ends
        self.val_fitted = False  # the validation size was fitted to --time-limit
        self.step_took = 0.0  # seconds the last training step took
        self.step_pace = 0.0  # the recent steps' seconds (a moving average)
        self.eval_pace = 0.0  # step_pace when the last validation was timed
        self.save_took = 0.0  # seconds the last save took
        self.sample_took = 0.0  # seconds the last evaluation sample took
        self.corpus = corpus
        self.run_dir = run_dir
        self.emit = on_event
        self.stop = stop
        self.device = world.device(resolve_device(config.device), config.device)
        if world.launched and self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's streams and DDP's buckets live there
        self.precision = self._precision(resume)
        configure_backends(self.device)

        # Initialise on the CPU from the seed, so the same seed gives the same initial
        # weights whichever device trains them.
        torch.manual_seed(config.random_seed)
        self.model = CharRNN(model_config)
        if resume is not None:
            self.model.load_state_dict(resume["model_state"])
        elif init is not None:  # --init-from: weights only, a new run in every other way
            self.model.load_state_dict(init["model_state"])
        # Where the weights came from: the --init-from checkpoints, oldest first.
        self.lineage: list[dict[str, Any]] = list(
            (resume or {}).get("lineage") or (init or {}).get("lineage") or []
        )
        self.model.to(self.device)
        if world.rank > 0:  # dropout: each process draws its own masks for its own rows
            torch.manual_seed(_rank_seed(config.random_seed, world.rank, 0))
        # Under torchrun, DDP averages the gradients of all processes in backward.
        self.net: torch.nn.Module = self.model
        if world.launched:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, **_fused(self.device))

        # --batch-size counts the streams of all processes: this one takes its rows.
        # Only this process's part of the text goes to its device.
        rows = config.batch_size // world.size
        mine = shard_span(corpus.train, rows, world.rank, world.size).to(self.device)
        self.streams: Streams = make_streams(mine, rows, config.seq_len)
        # What rank 0 saves: every process's rows of the hidden state and RNG states.
        self.collected: tuple[list[torch.Tensor] | None, list[dict[str, Any]]] | None = None
        self.steps_per_epoch = self.streams.windows_per_epoch
        # Validation costs bounded time on any corpus: at most val_chars predictions.
        # With --time-limit, always as segments: the first validation is fitted to the time.
        self.val_rows = val_segments(corpus.val, config.val_chars, config.time_limit is not None)
        self.val_used = (
            len(corpus.val) - 1
            if self.val_rows is None
            else self.val_rows.shape[0] * (self.val_rows.shape[1] - 1)
        )
        self.limit = limit_steps(config, self.steps_per_epoch)
        self.history: list[dict[str, Any]] = []
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.step = 0
        self.epoch = 0
        self.window = 0
        self.hidden: Hidden | None = None
        self.plan: int | None = self.limit if config.time_limit is None else None
        self.clock_plan = False  # True once this invocation planned from measured speed
        # Training loss summed over the windows since the last evaluation (train_loss).
        self.loss_sum = 0.0
        self.loss_count = 0
        if resume is not None:
            try:
                self._restore(resume)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(
                    f"cannot resume: the checkpoint's training state is damaged ({e!s:.100})"
                ) from None

    # -- checkpoint state

    def _precision(self, resume: dict[str, Any] | None) -> str:
        """The precision this invocation trains in. A checkpoint resumes on any machine: a
        run that asked for bf16 continues in fp32 where this device has none (a new run is
        refused instead). A change from the precision the checkpoint trained in is said once."""
        asked = self.config.precision
        missing = bf16_missing(self.device) if asked != "fp32" else None
        if resume is None:
            return resolve_precision(asked, self.device)
        precision = "fp32" if asked == "bf16" and missing else resolve_precision(asked, self.device)
        before = trained_precision(resume)
        if before is not None and before != precision:
            why = f": {missing}" if missing and precision == "fp32" else f" (--precision {asked})"
            self.emit(
                Notice(
                    f"the checkpoint trained in {before}; this run continues in {precision}{why}"
                )
            )
        return precision

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer_state"])
        self.step = int(ckpt["step"])
        self.epoch = int(ckpt["cursor"]["epoch"])
        self.window = int(ckpt["cursor"]["window"])
        dtype = self.model.head.weight.dtype  # float32: bf16 states of old checkpoints widen
        self.hidden = self._my_rows(hidden_from_list(ckpt.get("hidden"), self.device, dtype))
        self.history = list(ckpt.get("history") or [])
        self.best_val = ckpt.get("best_val_loss")
        if self.history:
            self.last_val = self.history[-1].get("val_loss")
        old = ckpt.get("train_config", {})
        same_limits = all(
            old.get(k) == getattr(self.config, k) for k in ("max_steps", "epochs", "time_limit")
        )
        if same_limits and ckpt.get("plan_steps") is not None:
            self.plan = int(ckpt["plan_steps"])  # continue the very same schedule
        rng = ckpt.get("rng") or {}
        ranks = rng.get("ranks")
        if ranks and len(ranks) == self.world.size:
            rng = ranks[self.world.rank]  # the same processes again: each its own state
        elif self.world.rank > 0:  # another process count: fresh, distinct dropout draws
            torch.manual_seed(_rank_seed(self.config.random_seed, self.world.rank, self.step))
            rng = {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][0], self.device)

    def _my_rows(self, hidden: Hidden | None) -> Hidden | None:
        """This process's rows of the saved state of all streams (L, B, H)."""
        if hidden is None or self.world.size == 1:
            return hidden
        b = self.config.batch_size // self.world.size
        rows = slice(self.world.rank * b, (self.world.rank + 1) * b)
        if isinstance(hidden, tuple):
            return tuple(h[:, rows].contiguous() for h in hidden)
        return hidden[:, rows].contiguous()

    def _rng(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(self.device)]
        return rng

    def collect(self) -> None:
        """Before rank 0 saves (every process calls this at the same step): the hidden
        state of all streams and every process's RNG state, gathered to rank 0."""
        if not self.world.launched:
            return
        parts = hidden_to_list(self.hidden)  # None at an epoch's start: the same everywhere
        gathered = None if parts is None else [self.world.gather_rows(h) for h in parts]
        self.collected = (gathered, self.world.gather(_to_cpu(self._rng())))

    def state(self) -> dict[str, Any]:
        rng = self._rng()
        hidden = hidden_to_list(self.hidden)
        if self.collected is not None:  # several processes: all of them, rank 0's first
            hidden, ranks = self.collected
            rng = {**ranks[0], "ranks": ranks}
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "charrnn_version": __version__,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "vocab": self.corpus.vocab.to_list(),
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": _to_cpu(self.optimizer.state_dict()),
            "step": self.step,
            "epoch": self.epoch,
            "cursor": {"epoch": self.epoch, "window": self.window},
            "hidden": hidden,
            "precision": self.precision,  # what these weights last trained in
            "rng": rng,
            "plan_steps": self.plan,
            "best_val_loss": self.best_val,
            "history": list(self.history),
            "lineage": list(self.lineage),
            "corpus": {
                **self.corpus.record(),
                "first_char": self.corpus.vocab.chars[int(self.corpus.train[0])],
            },
        }

    def save(self, also_best: bool) -> None:
        if not self.world.is_main:  # one process writes; collect() gave it the others' state
            return
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            # Never replace a good checkpoint with a broken model.
            raise TrainingError(
                f"the weights became non-finite by step {self.step}; nothing was saved over "
                f"{self.run_dir.last}: lower --lr (now {self.config.lr:g}) or --grad-clip"
            )
        began = time.perf_counter()
        state = self.state()
        targets = [self.run_dir.best, self.run_dir.last] if also_best else [self.run_dir.last]
        # Every file is written in full before any is renamed into place, and the previous
        # run's files (--force) are cleared only then: a save that fails changes nothing.
        written: list[tuple[str, str]] = []
        try:
            for path in targets:
                written.append((write_temporary(state, path), path))
            self.run_dir.clear_previous_run()
            while written:
                tmp, path = written.pop(0)
                commit_checkpoint(tmp, path)
        except OSError as e:
            raise OutputError(
                f"could not save {path} ({e.strerror or e}); the previous checkpoint is "
                "intact: free some space or fix the folder, then --resume"
            ) from None
        finally:
            for tmp, _ in written:
                discard_temporary(tmp)
            self.save_took = time.perf_counter() - began

    # -- pieces of the loop

    def progress_epoch(self) -> float:
        return self.epoch + self.window / self.steps_per_epoch

    def validate(self, elapsed: float, final: bool = False) -> float | None:
        # A validation that would run past --time-limit is abandoned, so the limit holds
        # however slow the machine is (last.pt is saved without it). Its first chunk is not
        # begun when, at the speed of the last training step, it could not end in time.
        # Except the final one of a run that has no best.pt at all: `charrnn sample` needs
        # one, so it scores at least a first chunk, past the limit if need be.
        if (
            self.deadline is not None
            and not (final and self.best_val is None and self.step > 0)
            and time.perf_counter() + self._first_chunk_estimate() > self.deadline
        ):
            return self._skip_validation()
        scored = self._score(final)
        if scored is None and not self.stop:  # out of time: save without a validation
            return self._skip_validation()
        if scored is None:  # interrupted mid-way: the caller saves and stops
            return None
        val, used = scored
        is_best = self.best_val is None or val < self.best_val
        if is_best:
            self.best_val = val
        self.last_val = val
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        t0 = time.perf_counter()
        sample = self.draw_sample()
        self.sample_took = time.perf_counter() - t0
        record = {
            "step": self.step,
            "epoch": round(self.progress_epoch(), 4),
            "val_loss": val,
            "val_bpc": val / LN2,
            "val_chars": used,
            "lr": learning_rate(max(0, self.step - 1), self.config, self.plan),
            "elapsed": round(elapsed, 3),
            "time": time.time(),
        }
        if train_loss is not None:
            record["train_loss"] = train_loss
        if sample is not None:
            record["sample"] = sample
        self.history.append(record)
        self.save(also_best=is_best)
        self.run_dir.append_metrics(record)
        self.emit(
            Evaluated(
                self.step,
                self.progress_epoch(),
                val,
                val / LN2,
                is_best,
                elapsed,
                train_loss=train_loss,
                sample=sample,
            )
        )
        return val

    def _score(self, final: bool) -> tuple[float, int] | None:
        """(validation loss, held-out characters predicted), or None if stopped or out of
        time. The final validation of a time-limited run scores what the time left allows
        (the first columns of every segment) rather than nothing."""
        if self.val_rows is None:
            val = evaluate(
                self.model,
                self.corpus.val,
                self.device,
                num_streams=val_streams(len(self.corpus.val)),
                stop=self.stop,
                deadline=self.deadline,
            )
            return None if val is None else (val, self.val_used)
        deadline, budget = self.deadline, None
        if self.config.time_limit is not None and not self.val_fitted:
            budget = VAL_TIME_SHARE * self.config.time_limit
        if final and deadline is not None:
            after = self.save_took + self.sample_took  # what follows the scoring
            left = max(0.0, deadline - time.perf_counter() - after)
            deadline, budget = None, left if budget is None else min(budget, left)
        scored = evaluate_segments(
            self.model, self.val_rows, self.device, self.stop, deadline, budget
        )
        if scored is None:
            return None
        val, cols = scored
        used = self.val_rows.shape[0] * cols
        if final and used < self.val_used:
            self.emit(
                Notice(
                    f"step {self.step}: the final validation predicted {used:,} of the "
                    f"{self.val_used:,} held-out characters, all that the time left allowed"
                )
            )
        elif not self.val_fitted:
            self._fit_validation(cols)
        self.val_fitted = True
        return val, used

    def _skip_validation(self) -> None:
        """Out of time: save last.pt unvalidated, and say which file holds the newest model
        (`charrnn sample` takes best.pt unless told otherwise)."""
        best = [r["step"] for r in self.history if r.get("val_loss") == self.best_val]
        older = f"best.pt is from step {best[-1]}" if best else "there is no best.pt yet"
        self.emit(
            Notice(
                f"step {self.step}: out of time, validation skipped; the newest model is "
                f"{self.run_dir.last} (not validated); {older}"
            )
        )
        self.save(also_best=False)

    def final_reserve(self, eval_time: float) -> float:
        """Seconds to keep for the final validation and save. Before any validation was
        timed, an estimate: as many seconds per character as a training step, for the
        characters a validation predicts (at most VAL_TIME_SHARE of the limit)."""
        if eval_time <= 0.0:
            per_char = self.step_pace / (self.config.batch_size * self.config.seq_len)
            eval_time = min(per_char * self.val_used, VAL_TIME_SHARE * self.config.time_limit)
            eval_time += self.save_took + self.sample_took
        elif self.eval_pace > 0.0:  # the machine slowed down since: so will the validation
            eval_time *= max(1.0, self.step_pace / self.eval_pace)
        # At least the first chunk, which validate() begins only if it can end in time.
        return FINAL_MARGIN * max(eval_time, self._first_chunk_estimate())

    def draw_sample(self) -> str | None:
        """A short sample from the same seed at every evaluation, as min-char-rnn prints
        while it trains: the same random numbers each time, so the differences between
        two samples come from the weights alone."""
        if self.config.sample_length == 0:
            return None
        vocab = self.corpus.vocab
        seed = vocab.chars[int(self.corpus.train[0])]
        # numpy takes seeds from 0 to 2**64 - 1; torch's (the run's) may be negative.
        seed_bits = self.config.random_seed % 2**64
        config = SampleConfig(length=self.config.sample_length, random_seed=seed_bits)
        was_training = self.model.training
        try:
            # numpy draws only: the torch RNG (dropout) is untouched, so resuming stays exact.
            return "".join(
                text for _, text in generate(self.model, vocab, seed, config, self.device)
            )
        finally:
            self.model.train(was_training)

    def _first_chunk_estimate(self) -> float:
        """Seconds the first chunk of a validation may take: as many seconds per character
        as the last training step (forward only is cheaper; fp32 scoring is dearer)."""
        if self.val_rows is not None:
            chars = self.val_rows.shape[0] * min(256, self.val_rows.shape[1] - 1)
        else:
            chars = val_streams(len(self.corpus.val)) * 1024
        pace = self.step_pace or self.step_took
        return pace * chars / (self.config.batch_size * self.config.seq_len)

    def _fit_validation(self, cols: int) -> None:
        """Keep the columns the first time-limited validation had time for, so every later
        validation of this invocation scores the same characters in the same time."""
        if cols >= self.val_rows.shape[1] - 1:
            return
        before = self.val_used
        self.val_rows = self.val_rows[:, : cols + 1]
        self.val_used = self.val_rows.shape[0] * cols
        self.emit(
            Notice(
                f"validating on {self.val_used:,} held-out characters instead of {before:,}: "
                f"here a validation of {before:,} takes more than "
                f"{VAL_TIME_SHARE:.0%} of --time-limit"
            )
        )

    def plan_from_time(self, elapsed: float, step_time: float, eval_time: float) -> None:
        """Fix the schedule's length so the decay ends when the time limit does."""
        remaining = self.config.time_limit - elapsed - self.final_reserve(eval_time)
        per_step = step_time + eval_time / self.config.eval_every
        steps = max(1, int(0.97 * remaining / per_step))
        self.plan = self.step + steps if self.limit is None else min(self.limit, self.step + steps)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, bool]:
        """One window: returns (loss, pre-clip gradient norm, learning rate, applied?)."""
        lr = learning_rate(self.step, self.config, self.plan)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.precision):
            logits, hidden = self.net(x, self.hidden)  # (B, T, V)
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()  # under DDP, this also averages the gradients of all processes
        except RuntimeError as e:
            if self.world.launched and is_lost_peer(e):
                raise lost_contact(self.world, e) from None
            raise
        norm = clip_gradients(self.params, self.config.grad_clip)
        loss_value = self.world.mean(loss.detach()).item()  # the whole batch's loss
        ok = math.isfinite(loss_value) and math.isfinite(norm)
        if ok:
            self.optimizer.step()
            # Keep the state for the next window but cut the graph here: that is the
            # "truncated" in truncated BPTT.
            self.hidden = detach_hidden(hidden, self.model.head.weight.dtype)
        else:
            self.hidden = None  # a non-finite state would poison every later window
        return loss_value, norm, lr, ok

    def finished(self) -> bool:
        """A resumed run that already reached its step limit: there is nothing to train."""
        return self.limit is not None and self.step >= self.limit

    def run(self) -> TrainResult:
        cfg = self.config
        if self.finished():  # say so and change nothing: no evaluation, no save
            return TrainResult(
                step=self.step,
                epoch=self.progress_epoch(),
                best_val_loss=self.best_val,
                last_val_loss=self.last_val,
                stop_reason="already_done",
                elapsed=0.0,
                history=self.history,
            )
        self.stop.armed = True
        self.emit(
            RunStarted(
                step=self.step,
                resumed=self.step > 0 or bool(self.history),
                num_params=self.model.num_params(),
                device=str(self.device),
                precision=self.precision,
                steps_per_epoch=self.steps_per_epoch,
                limit_steps=self.limit,
                time_limit=cfg.time_limit,
                train_chars=len(self.corpus.train),
                val_chars=len(self.corpus.val),
                vocab_size=len(self.corpus.vocab),
                val_used=self.val_used,
                input=self.model.config.input,
                processes=self.world.size,
            )
        )
        chars_per_step = cfg.batch_size * cfg.seq_len
        # With `started` (the command's own start), preparing the corpus counts against
        # --time-limit too: the limit is the whole invocation's.
        start = self.started if self.started is not None else time.perf_counter()
        self.deadline = None if cfg.time_limit is None else start + cfg.time_limit
        start_step = self.step
        calibrate_at = start_step + CALIBRATION_STEPS
        timing_from: tuple[int, float] | None = None
        rate_mark = (self.step, start)
        chars_per_sec = 0.0
        eval_time = 0.0
        bad_steps = 0
        # A run resumed right after an evaluation has that step's loss already.
        evaluated_at = self.history[-1]["step"] if self.history else -1
        self.model.train()
        stop_reason = "max_steps"
        while True:
            now = time.perf_counter()
            elapsed = now - start
            decision = None
            if self.limit is not None and self.step >= self.limit:
                decision = "max_steps" if cfg.max_steps == self.limit else "epochs"
            elif cfg.time_limit is not None and (
                (self.plan is not None and self.step >= self.plan)
                # Stop before a step that would end past the limit (a slow machine's steps
                # can take seconds).
                or elapsed + self.final_reserve(eval_time) + self.step_took >= cfg.time_limit
            ):
                decision = "time_limit"
            # Under torchrun every process stops at the same step, by rank 0's clock; a
            # signal that lands after this point is acted on at the next step.
            stopping, decision = self._agree(decision)
            if stopping:
                break
            if decision is not None:
                stop_reason = decision
                break

            if self.window >= self.steps_per_epoch:
                self.epoch += 1
                self.window = 0
                self.hidden = None  # each epoch starts the streams from a zero state
            x, y = self.streams.window(self.window)
            loss, norm, lr, ok = self.train_step(x, y)
            self.step_took = time.perf_counter() - now
            if self.step > start_step:  # the first step's one-off costs would mislead
                pace = self.step_pace or self.step_took
                self.step_pace = 0.8 * pace + 0.2 * self.step_took
            self.step += 1
            self.window += 1
            if ok:
                bad_steps = 0
                self.loss_sum += loss
                self.loss_count += 1
            else:
                bad_steps += 1
                self.emit(
                    Notice(
                        f"step {self.step}: non-finite loss or gradient ({loss:.4g}, norm "
                        f"{norm:.4g}); step skipped"
                    )
                )
                if bad_steps >= MAX_BAD_STEPS:
                    raise TrainingError(
                        f"{bad_steps} steps in a row had a non-finite loss or gradient (by step "
                        f"{self.step}); stopped without saving: lower --lr (now {cfg.lr:g})"
                    )

            now = time.perf_counter()
            if self.step - start_step == 3:
                timing_from = (self.step, now)  # skip the first steps' one-off costs
            if now - rate_mark[1] >= 1.0:
                chars_per_sec = (self.step - rate_mark[0]) * chars_per_step / (now - rate_mark[1])
                rate_mark = (self.step, now)
            elif chars_per_sec == 0.0 and now > start:
                chars_per_sec = (self.step - start_step) * chars_per_step / (now - start)

            calibrating = self.plan is None and self.step >= calibrate_at
            if self.step % cfg.eval_every == 0 or (cfg.time_limit is not None and calibrating):
                mark_step, mark_time = timing_from or (start_step, start)
                step_time = (now - mark_time) / max(1, self.step - mark_step)
                t0 = time.perf_counter()
                self.collect()
                # The last validation before the limit, if the time left allows no other.
                last = cfg.time_limit is not None and (
                    now - start + self.final_reserve(eval_time) + self.step_took >= cfg.time_limit
                )
                if self.world.is_main and self.validate(now - start, final=last) is None:
                    evaluated_at = self.step  # saved without it (out of time) or stopping
                    continue
                evaluated_at = self.step
                eval_time = time.perf_counter() - t0
                self.eval_pace = self.step_pace
                if cfg.time_limit is not None and (calibrating or self.clock_plan):
                    # Re-planned at every evaluation, so the decay still ends with the time
                    # limit when the machine gets slower or faster part-way.
                    self.plan_from_time(time.perf_counter() - start, step_time, eval_time)
                    self.clock_plan = True
                timing_from = (self.step, time.perf_counter())
            elif self.clock_plan and timing_from and now - timing_from[1] >= REPLAN_SECONDS:
                # Between evaluations too (a short run may have none after the first): a
                # plan made from the first, slower steps would end the run early.
                step_time = (now - timing_from[1]) / max(1, self.step - timing_from[0])
                self.plan_from_time(now - start, step_time, eval_time)
                timing_from = (self.step, now)

            self.emit(
                StepDone(
                    step=self.step,
                    epoch=self.progress_epoch(),
                    loss=loss,
                    grad_norm=norm,
                    lr=lr,
                    chars_per_sec=chars_per_sec,
                    elapsed=time.perf_counter() - start,
                    eta=self._eta(time.perf_counter() - start, chars_per_sec / chars_per_step),
                    plan_steps=self.plan,
                )
            )

        elapsed = time.perf_counter() - start
        if not stopping and evaluated_at != self.step:
            self.collect()
            if self.world.is_main:
                self.validate(elapsed, final=True)  # if interrupted part-way, saved below
            stopping, _ = self._agree(None)
        if stopping:
            stop_reason = stopping
            self.collect()
            self.save(also_best=False)  # no evaluation: stop as fast as asked
        if self.world.launched:  # every process returns what rank 0 measured
            shared = (self.best_val, self.last_val, self.history)
            self.best_val, self.last_val, self.history = self.world.broadcast(shared)
        return TrainResult(
            step=self.step,
            epoch=self.progress_epoch(),
            best_val_loss=self.best_val,
            last_val_loss=self.last_val,
            stop_reason=stop_reason,
            elapsed=time.perf_counter() - start,
            history=self.history,
        )

    def _agree(self, decision: str | None) -> tuple[str | None, str | None]:
        """(why to stop at once: a signal seen by any process, or None; rank 0's decision),
        with rank 0's plan: what every process acts on. Alone, the signal as seen now."""
        if not self.world.launched:
            return self.stop.reason, decision
        signal, decision, plan = self.world.agree_step(self.stop.reason, decision, self.plan)
        self.plan = plan
        if signal is not None and not self.stop:
            self.stop.set(signal)
        return signal, decision

    def _eta(self, elapsed: float, steps_per_sec: float) -> float | None:
        ends = []
        target = self.plan if self.plan is not None else self.limit
        if target is not None and steps_per_sec > 0:
            ends.append(max(0, target - self.step) / steps_per_sec)
        if self.config.time_limit is not None:
            ends.append(max(0.0, self.config.time_limit - elapsed))
        return min(ends) if ends else None


def _rank_seed(seed: int, rank: int, step: int) -> int:
    # Distinct for each (run seed, process, step resumed at); torch takes 64-bit seeds.
    return (seed * 1_000_003 + rank * 7919 + step) % 2**63


def _fused(device: torch.device) -> dict[str, Any]:
    # The fused Adam kernel does the update in one launch per step on CUDA, and on the CPU
    # in one pass over each tensor instead of about ten (a V = 6,000 model has 2.3 M
    # parameters in its embedding and output layer).
    return {"fused": True} if device.type in ("cuda", "cpu") else {}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


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
) -> TrainResult:
    """Train (or, with `resume`, continue) a char-RNN on `corpus`, saving into `run_dir`.

    `init` ({"model_state", "lineage"}) starts a new run from given weights (--init-from).

    `model_config.vocab_size` must match the corpus. The caller has prepared and locked
    `run_dir`. Returns when a limit is reached or `stop` is set; raises TrainingError if
    the loss stays non-finite. `started` (a time.perf_counter() value) is when the
    invocation began, for --time-limit; by default, now.
    """
    needed = min_train_chars(config.batch_size, config.seq_len)
    if len(corpus.train) < needed:
        raise ValueError(f"the training text needs at least {needed} characters")
    # Refuse a run that cannot fit before allocating any of it (ResourceError).
    check_memory(model_config, config, resolve_device(config.device))
    run = _Run(
        model_config,
        config,
        corpus,
        run_dir,
        on_event or (lambda event: None),
        resume,
        stop if stop is not None else StopRequest(),
        init,
        started,
        world,
    )
    try:
        return run.run()
    finally:
        # DDP holds the process group and gloo's worker threads: let them go now, while the
        # interpreter is whole (destroyed at exit instead, they can abort the process).
        run.net = run.model
