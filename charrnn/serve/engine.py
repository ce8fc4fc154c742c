"""Continuous batching: the streams being generated advance together, one step at a time.

One engine thread owns the model. Each step it draws one character for every active
stream, hands the characters out, and advances the recurrent state of all of them in one
batched step (a hidden state is small, so a step for 16 streams costs little more than a
step for one: the weights are read once). New streams join at the next step after their
seed has been fed; a cancelled stream (its client hung up) leaves at the next step, so it
costs nothing after that.

Exact streams. A float32 matrix product's last bits depend on the batch's shape (BLAS
picks other kernels, hence other summation orders, for 1 row and for 16), and over a few
thousand characters those bits can change a draw. `charrnn sample` computes one stream
alone, so a stream that must give its text exactly (a `random_seed`, or temperature 0)
is stepped alone, with `charrnn sample`'s own code: a one-row stepper, the same
`numpy.random.Generator`, the same draws. The other streams share the batched step.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import SampleConfig
from ..sample import MIN_TEMPERATURE, UNIFORM_BLOCK, NumpyStepper, draw, feed_seed

# What a stream's sink is told, from the engine thread: text to append, and once, with the
# last text, why the stream ended ("length", "stop", "shutdown"); None while it goes on.
Sink = Callable[[str, "str | None"], None]


ROW_BLOCK = 4  # rows of a batched step are padded to a multiple of this
# Seconds between hand-outs of text: 50 a second reads as a smooth stream.
FLUSH_SECONDS = 0.02


class EngineBusy(Exception):
    """Every row and every place in the queue is taken: try again shortly."""


@dataclass(frozen=True)
class Job:
    """A checked generate request (see serve.requests)."""

    seed: str
    seed_ids: list[int]
    config: SampleConfig


class Stream:
    """One request's sample: its own generator, position and stop text."""

    def __init__(self, job: Job, sink: Sink):
        self.job = job
        self.sink = sink
        config = job.config
        self.exact = config.random_seed is not None or config.temperature < MIN_TEMPERATURE
        self.rng = np.random.default_rng(config.random_seed)
        self.options = (config.temperature, config.top_k, config.top_p)
        self.t = 0  # characters drawn
        self.recent = ""  # the end of the text, as long as the stop text
        self.uniforms: np.ndarray | None = None
        self.stepper: NumpyStepper | None = None  # exact streams keep their own
        self.logits: np.ndarray | None = None  # (1, V): the next draw's, until it joins
        self.last_id = 0  # an exact stream's last drawn id
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating for this stream (its reader is gone); takes effect next step."""
        self.cancelled = True

    def uniform(self) -> np.ndarray:
        """This step's uniform (1,): drawn a block at a time, as `charrnn sample` does."""
        if self.t % UNIFORM_BLOCK == 0:
            self.uniforms = self.rng.random((UNIFORM_BLOCK, 1))
        return self.uniforms[self.t % UNIFORM_BLOCK]

    def take(self, char: str) -> str | None:
        """Count a drawn character; why the stream ends with it, or None."""
        self.t += 1
        stop = self.job.config.stop_at
        if stop:
            self.recent = (self.recent + char)[-len(stop) :]
            if self.recent == stop:
                return "stop"
        return "length" if self.t >= self.job.config.length else None


@dataclass
class Stats:
    active: int = 0  # streams generating now
    queued: int = 0  # accepted, waiting for a row
    started: int = 0
    finished: int = 0
    cancelled: int = 0  # left because their reader went away
    chars: int = 0  # characters generated, all streams
    steps: int = 0  # batched steps run


class Engine:
    """The model, the active streams and the thread that steps them.

    Give BLAS one thread first (serve.server.one_thread): OpenBLAS's own threads, on a busy
    2-core machine, made each step several times slower."""

    def __init__(
        self,
        model,
        max_streams: int = 64,
        max_queue: int = 64,
        deliver=None,
        flush_seconds: float = FLUSH_SECONDS,
    ):
        self.model = model  # a charrnn.api.Model on the CPU
        self.chars = model.vocab.chars
        self.max_streams, self.max_queue = max_streams, max_queue
        # Called once per step from the engine thread with [(stream, text, end)]; by
        # default each stream's sink is called in turn.
        self.deliver = deliver or _call_sinks
        self.flush_seconds = flush_seconds
        self.proto = NumpyStepper(model.module, 1)  # its weights are shared by every stepper
        self.batch = _Batch(self.proto)
        self.exact: list[Stream] = []
        self.pending: deque[Stream] = deque()
        self.stats = Stats()
        self.lock = threading.Condition()
        self.closing: str | None = None  # "shutdown", or "error" if the thread failed
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="charrnn-engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def submit(self, job: Job, sink: Sink) -> Stream:
        """Queue a stream; it starts at the next step with a free row. Raises EngineBusy
        when the rows and the queue are full."""
        stream = Stream(job, sink)
        with self.lock:
            if self.closing:
                raise EngineBusy("the server is shutting down")
            if self.stats.active + len(self.pending) >= self.max_streams + self.max_queue:
                raise EngineBusy(f"{self.max_streams} streams running, {self.max_queue} waiting")
            self.pending.append(stream)
            self.stats.queued = len(self.pending)
            self.lock.notify()
        return stream

    def close(self, timeout: float = 5.0) -> None:
        """Cut every stream (each is told "shutdown") and stop the thread."""
        with self.lock:
            self.closing = "shutdown"
            self.lock.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def snapshot(self) -> dict:
        with self.lock:
            return dict(vars(self.stats))

    # ------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # a fault must not leave every client waiting forever
            self.error = f"{type(e).__name__}: {e}"
            with self.lock:
                self.closing = "error"
        self._cut_all()

    def _loop(self) -> None:
        out: list[tuple[Stream, str, str | None]] = []
        flushed = time.monotonic()
        while True:
            with self.lock:
                while not (self.closing or self.pending or self.stats.active):
                    self.lock.wait()
                if self.closing:
                    break
                joining = self._admit()
            for stream in joining:
                out.append((stream, stream.job.seed, None))
                self._warm_up(stream)
            self._drop_cancelled()
            self._step(out)
            now = time.monotonic()
            # Text goes out a few dozen times a second, not every step: handing each
            # character to the event loop on its own would cost more than drawing it.
            if now - flushed >= self.flush_seconds or not self.stats.active:
                self.deliver(_merged(out))
                out, flushed = [], now
        self.deliver(_merged(out))

    def _admit(self) -> list[Stream]:
        """Take waiting streams into free rows (under the lock)."""
        joining = []
        while self.pending and self.stats.active + len(joining) < self.max_streams:
            stream = self.pending.popleft()
            if stream.cancelled:
                self.stats.cancelled += 1
            else:
                joining.append(stream)
        self.stats.active += len(joining)
        self.stats.started += len(joining)
        self.stats.queued = len(self.pending)
        return joining

    def _warm_up(self, stream: Stream) -> None:
        """Feed the seed through a one-row stepper, exactly as `charrnn sample` does."""
        stepper = copy.copy(self.proto)
        stepper.reset()
        stream.logits = feed_seed(self.model.module, stepper, stream.job.seed_ids)  # (1, V)
        if stream.exact:
            stream.stepper = stepper
            self.exact.append(stream)
        else:
            self.batch.join(stream, stepper)

    def _drop_cancelled(self) -> None:
        gone = [s for s in self.batch.streams if s.cancelled]
        gone += [s for s in self.exact if s.cancelled]
        if gone:
            self.batch.leave(set(gone))
            self.exact = [s for s in self.exact if not s.cancelled]
            self._count_ended(len(gone), cancelled=True)

    def _step(self, out: list[tuple[Stream, str, str | None]]) -> None:
        """Draw one character for every stream, then advance those that go on."""
        ended: set[Stream] = set()
        drawn = [*self.batch.draw(), *self._draw_exact()]
        for stream, char_id in drawn:
            char = self.chars[char_id]
            end = stream.take(char)
            out.append((stream, char, end))
            if end:
                ended.add(stream)
        self.batch.leave(ended)
        self.exact = [s for s in self.exact if s not in ended]
        self.batch.advance()
        for stream in self.exact:
            stream.logits = stream.stepper.step(np.array([stream.last_id]))
        self._count_ended(len(ended))
        with self.lock:
            self.stats.chars += len(drawn)
            self.stats.steps += 1

    def _draw_exact(self) -> list[tuple[Stream, int]]:
        drawn = []
        for stream in self.exact:
            ids = draw(stream.logits, *stream.options, stream.uniform())
            stream.last_id = int(ids[0])
            drawn.append((stream, stream.last_id))
        return drawn

    def _count_ended(self, n: int, cancelled: bool = False) -> None:
        with self.lock:
            self.stats.active -= n
            self.stats.finished += 0 if cancelled else n
            self.stats.cancelled += n if cancelled else 0

    def _cut_all(self) -> None:
        streams = [*self.batch.streams, *self.exact, *self.pending]
        self.deliver([(s, "", self.closing) for s in streams])
        with self.lock:
            self.stats.active, self.stats.queued = 0, 0
            self.pending.clear()


def _merged(out: list[tuple[Stream, str, str | None]]) -> list[tuple[Stream, str, str | None]]:
    """Each stream's pieces as one: its text in order, and its end if it has one."""
    texts: dict[Stream, list[str]] = {}
    ends: dict[Stream, str | None] = {}
    for stream, text, end in out:
        texts.setdefault(stream, []).append(text)
        ends[stream] = ends.get(stream) or end
    return [(stream, "".join(parts), ends[stream]) for stream, parts in texts.items()]


def _call_sinks(items: list[tuple[Stream, str, str | None]]) -> None:
    for stream, text, end in items:
        stream.sink(text, end)


class _Batch:
    """The streams that share one batched step: their states side by side, one row each,
    in a NumpyStepper whose arrays grow and shrink as streams join and leave."""

    def __init__(self, proto: NumpyStepper):
        self.stepper = copy.copy(proto)
        self.stepper.num_streams = 0
        self.stepper.reset()
        self.streams: list[Stream] = []
        self.logits = np.zeros((0, proto.b_out.shape[0]), np.float32)  # (S, V)
        self.ids = np.zeros(0, np.int64)

    def join(self, stream: Stream, one: NumpyStepper) -> None:
        """Add a stream whose seed `one` (a one-row stepper) has fed."""
        s = self.stepper
        s.xh = [np.concatenate([a, b]) for a, b in zip(s.xh, one.xh, strict=True)]
        if s.c is not None:
            s.c = np.concatenate([s.c, one.c], axis=1)  # (L, S + 1, H)
        self.logits = np.concatenate([self.logits, stream.logits])
        self.ids = np.append(self.ids, 0)  # rows stay aligned until the next draw sets ids
        self.streams.append(stream)
        stream.logits = None

    def leave(self, gone: set[Stream]) -> None:
        if not gone.intersection(self.streams):
            return
        keep = [i for i, st in enumerate(self.streams) if st not in gone]
        s = self.stepper
        s.xh = [a[keep] for a in s.xh]
        if s.c is not None:
            s.c = s.c[:, keep]
        self.logits, self.ids = self.logits[keep], self.ids[keep]
        self.streams = [self.streams[i] for i in keep]

    def draw(self) -> list[tuple[Stream, int]]:
        """One id per row, each from its own stream's generator; rows with the same
        temperature, top-k and top-p are drawn in one call."""
        if not self.streams:
            return []
        uniform = np.concatenate([s.uniform() for s in self.streams])  # (S,)
        self.ids = np.zeros(len(self.streams), np.int64)
        groups: dict[tuple, list[int]] = {}
        for i, stream in enumerate(self.streams):
            groups.setdefault(stream.options, []).append(i)
        for options, rows in groups.items():
            self.ids[rows] = draw(self.logits[rows], *options, uniform[rows])
        return list(zip(self.streams, self.ids.tolist(), strict=True))

    def advance(self) -> None:
        """One step for every row. OpenBLAS multiplies 2 or 3 rows more slowly than 4, and
        those more slowly than one row at a time (bench/serve.py): 2 or 3 rows step one
        by one, and counts above 4 are padded to a multiple of 4; one row is a gemv."""
        rows = len(self.streams)
        if rows in (2, 3):
            self.logits = np.concatenate(
                [self._row(i).step(self.ids[i : i + 1]) for i in range(rows)]
            )
        elif rows > 1 and rows % ROW_BLOCK:
            s, pad = self.stepper, ROW_BLOCK - rows % ROW_BLOCK
            s.xh = [np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) for a in s.xh]
            if s.c is not None:
                s.c = np.concatenate(
                    [s.c, np.zeros((s.c.shape[0], pad, s.c.shape[2]), s.c.dtype)], axis=1
                )
            self.logits = s.step(np.concatenate([self.ids, np.zeros(pad, np.int64)]))[:rows]
            s.xh = [a[:rows] for a in s.xh]
            s.c = None if s.c is None else s.c[:, :rows]
        elif rows:
            self.logits = self.stepper.step(self.ids)  # (S, V)

    def _row(self, i: int) -> NumpyStepper:
        """A one-row stepper over row i's state: it steps that row in place."""
        row = copy.copy(self.stepper)
        row.xh = [a[i : i + 1] for a in self.stepper.xh]
        row.c = None if row.c is None else self.stepper.c[:, i : i + 1]
        return row


def wait_idle(engine: Engine, timeout: float) -> bool:
    """Whether the engine has no active or queued stream within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = engine.snapshot()
        if snap["active"] == 0 and snap["queued"] == 0:
            return True
        time.sleep(0.01)
    return False
