"""A lane: one process that steps a batch of streams, as the engine (engine.py) tells it.

Each step draws one character for every stream the lane holds and advances the recurrent
state of all of them in one batched step (a hidden state is small, so a step for 8 rows
costs little more than a step for one: the weights are read once). A lane is a process,
not a thread: two threads stepping side by side in one process spent a third of each
step waiting for each other's Python work (the GIL) and gained nothing at 16 streams
(bench/serve.py --lanes).

Messages, over one socket. In: the model (pickled bytes), then ("join", sid, job),
("cancel", sid), ("close", why). Out: ("ready",) once, then ("text", [(sid, text, end)],
chars, steps) a few dozen times a second, and ("error", message) if the lane fails. `end`
is None while a stream goes on, then "length", "stop", "cancelled" (its reader left) or
the close's `why`.

Exact streams. A float32 matrix product's last bits depend on the batch's shape (BLAS
picks other kernels, hence other summation orders, for 1 row and for 16), and over a few
thousand characters those bits can change a draw. `charrnn sample` computes one stream
alone, so a stream that must give its text exactly (a `random_seed`, or temperature 0)
is stepped alone, with `charrnn sample`'s own code: a one-row stepper, the same
`numpy.random.Generator`, the same draws. The other streams share the batched step.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ..sample import MIN_TEMPERATURE, UNIFORM_BLOCK, NumpyStepper, draw, feed_seed

ROW_BLOCK = 4  # rows of a batched step are padded to a multiple of this
# Seconds between hand-outs of text: 50 a second reads as a smooth stream.
FLUSH_SECONDS = 0.02
POLL_SECONDS = 0.001  # between looks for news (joins, cancels) while stepping

Out = list[tuple[int, str, "str | None"]]  # (sid, text, end)


def one_thread() -> None:
    """One BLAS and one torch thread per process: the lanes, not BLAS, use the cores;
    competing BLAS threads on 2 cores slowed a one-row step tenfold."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


class Row:
    """One stream's sampling inside a lane: its generator, count and stop text."""

    def __init__(self, sid: int, job: Any):
        self.sid, self.job = sid, job
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


class Lane:
    """The rows of one lane: the batch, and the exact rows stepped alone."""

    def __init__(self, module: Any, chars: list[str]):
        self.module, self.chars = module, chars
        self.proto = NumpyStepper(module, 1)  # its weights are shared by every stepper
        self.batch = _Batch(self.proto, chars)
        self.exact: list[Row] = []
        self.rows: dict[int, Row] = {}
        self.chars_drawn = self.steps = 0  # since the last hand-out

    def join(self, sid: int, job: Any, out: Out) -> None:
        """Feed the seed through a one-row stepper, exactly as `charrnn sample` does."""
        row = Row(sid, job)
        out.extend(self.batch.take_text())  # before the batch's rows change
        out.append((sid, job.seed, None))
        stepper = copy.copy(self.proto)
        stepper.reset()
        row.logits = feed_seed(self.module, stepper, job.seed_ids)  # (1, V)
        if row.exact:
            row.stepper = stepper
            self.exact.append(row)
        else:
            self.batch.join(row, stepper)
        self.rows[sid] = row

    def cancel(self, sid: int, out: Out) -> None:
        """The stream's reader is gone: its row leaves now."""
        if sid in self.rows:
            self._leave({self.rows[sid]}, "cancelled", out)

    def step(self, out: Out) -> None:
        """Draw one character for every row, then advance those that go on."""
        ended = self.batch.draw()  # [(row, why)]: the batch keeps the text itself
        for row in self.exact:
            row.last_id = int(draw(row.logits, *row.options, row.uniform())[0])
            char = self.chars[row.last_id]
            out.append((row.sid, char, None))
            end = row.take(char)
            if end:
                ended.append((row, end))
        self.chars_drawn += len(self.rows)
        self.steps += 1
        for end in {why for _, why in ended}:
            self._leave({row for row, why in ended if why == end}, end, out)
        self.batch.advance()
        for row in self.exact:
            row.logits = row.stepper.step(np.array([row.last_id]))

    def cut(self, why: str, out: Out) -> None:
        """End every row now, each with the text it has."""
        self._leave(set(self.rows.values()), why, out)

    def _leave(self, gone: set[Row], why: str, out: Out) -> None:
        out.extend(self.batch.take_text())
        out.extend((row.sid, "", why) for row in gone)
        self.batch.leave(gone)
        self.exact = [row for row in self.exact if row not in gone]
        for row in gone:
            del self.rows[row.sid]


def lane_main(fd: int) -> None:
    """A lane process's whole life (engine.LANE_COMMAND; fd is its end of a socket pair):
    the model first, then step while there are rows, wait when there are none."""
    conn = Connection(fd)
    # Ctrl-C in a terminal signals the whole process group, and a service manager may
    # send SIGTERM to every process: the server decides, and closes its lanes itself
    # (each stream is told "shutdown"). A lane whose server is gone ends at EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        one_thread()
        module, chars, flush_seconds = pickle.loads(conn.recv_bytes())
        lane = Lane(module, chars)
        conn.send(("ready",))
        _serve_lane(conn, lane, flush_seconds)
    except (EOFError, BrokenPipeError):
        pass  # the engine is gone: nothing to tell
    except Exception as e:  # the engine cuts every stream and says why
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _serve_lane(conn: Any, lane: Lane, flush_seconds: float) -> None:
    out: Out = []
    flushed = looked = time.monotonic()
    while True:
        # With rows to step, look for news a thousand times a second at most (a look
        # costs a system call); with none, wait for it.
        if not lane.rows or time.monotonic() - looked >= POLL_SECONDS:
            looked = time.monotonic()
            if not _take_news(conn, lane, out):
                return
        if lane.rows:
            lane.step(out)
        now = time.monotonic()
        # Text goes out a few dozen times a second, not every step: sending each
        # character on its own would cost more than drawing it.
        if now - flushed >= flush_seconds or not lane.rows:
            _hand_out(conn, lane, out)
            out, flushed = [], now


def _take_news(conn: Any, lane: Lane, out: Out) -> bool:
    """Joins and cancels that have come (waiting for one when the lane is empty and has
    handed out everything); False once told to close."""
    while conn.poll(0 if lane.rows or out else None):
        message = conn.recv()
        if message[0] == "join":
            lane.join(message[1], message[2], out)
        elif message[0] == "cancel":
            lane.cancel(message[1], out)
        else:  # ("close", why)
            lane.cut(message[1], out)
            _hand_out(conn, lane, out)
            return False
    return True


def _hand_out(conn: Any, lane: Lane, out: Out) -> None:
    out.extend(lane.batch.take_text())
    if not (out or lane.steps):
        return
    conn.send(("text", _merged(out), lane.chars_drawn, lane.steps))
    lane.chars_drawn = lane.steps = 0


def _merged(out: Out) -> Out:
    """Each stream's pieces as one: its text in order, and its end if it has one."""
    texts: dict[int, list[str]] = {}
    ends: dict[int, str | None] = {}
    for sid, text, end in out:
        texts.setdefault(sid, []).append(text)
        ends[sid] = ends.get(sid) or end
    return [(sid, "".join(parts), ends[sid]) for sid, parts in texts.items()]


class _Batch:
    """The rows that share one batched step: their states side by side, one row each, in a
    NumpyStepper whose arrays grow and shrink as rows join and leave.

    The per-row bookkeeping is numpy, not a Python loop over rows: one uniform draw for
    all rows, a count of characters left per row, and the drawn ids kept until text is
    handed out (a few dozen times a second), then decoded a row at a time."""

    def __init__(self, proto: NumpyStepper, chars: list[str]):
        self.stepper = copy.copy(proto)
        self.stepper.num_streams = 0
        self.stepper.reset()
        self.rows: list[Row] = []
        self.logits = np.zeros((0, proto.b_out.shape[0]), np.float32)  # (S, V)
        self.ids = np.zeros(0, np.int64)
        self.left = np.zeros(0, np.int64)  # (S,) characters each row has still to draw
        self.drawn: list[np.ndarray] = []  # (S,) ids per step since the last hand-out
        self.code_points = np.array([ord(c) for c in chars], np.uint32)  # (V,)
        # Unseeded rows need no generator of their own: one draw serves every row.
        self.rng = np.random.default_rng()
        self._regroup()

    def _regroup(self) -> None:
        """Rows grouped by sampling options (one draw call each), and the rows with a stop
        text (checked in Python): recomputed only when rows join or leave."""
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.rows):
            groups.setdefault(row.options, []).append(i)
        whole = len(groups) == 1
        self.groups = [(opts, None if whole else np.array(ix)) for opts, ix in groups.items()]
        self.stops = [(i, row) for i, row in enumerate(self.rows) if row.job.config.stop_at]

    def join(self, row: Row, one: NumpyStepper) -> None:
        """Add a row whose seed `one` (a one-row stepper) has fed; take_text() first."""
        s = self.stepper
        s.xh = [np.concatenate([a, b]) for a, b in zip(s.xh, one.xh, strict=True)]
        if s.c is not None:
            s.c = np.concatenate([s.c, one.c], axis=1)  # (L, S + 1, H)
        self.logits = np.concatenate([self.logits, row.logits])
        self.ids = np.append(self.ids, 0)  # rows stay aligned until the next draw sets ids
        self.left = np.append(self.left, row.job.config.length)
        self.rows.append(row)
        row.logits = None
        self._regroup()

    def leave(self, gone: set[Row]) -> None:
        """Drop rows; take_text() first."""
        if not gone.intersection(self.rows):
            return
        keep = [i for i, row in enumerate(self.rows) if row not in gone]
        s = self.stepper
        s.xh = [a[keep] for a in s.xh]
        if s.c is not None:
            s.c = s.c[:, keep]
        self.logits, self.ids, self.left = self.logits[keep], self.ids[keep], self.left[keep]
        self.rows = [self.rows[i] for i in keep]
        self._regroup()

    def draw(self) -> list[tuple[Row, str]]:
        """One id per row, each row with its own options; the rows that end with it."""
        if not self.rows:
            return []
        uniform = self.rng.random(len(self.rows))  # (S,)
        for options, ix in self.groups:
            if ix is None:
                self.ids = draw(self.logits, *options, uniform)
            else:
                self.ids[ix] = draw(self.logits[ix], *options, uniform[ix])
        self.drawn.append(self.ids.copy())
        self.left -= 1
        ended = {self.rows[i]: "length" for i in np.flatnonzero(self.left == 0)}
        for i, row in self.stops:
            if row.take(chr(self.code_points[self.ids[i]])) == "stop":
                ended[row] = "stop"
        return list(ended.items())

    def take_text(self) -> Out:
        """Each row's characters drawn since the last call, as text."""
        if not self.drawn:
            return []
        drawn = self.code_points[np.stack(self.drawn, axis=1)]  # (S, steps)
        self.drawn = []
        return [
            (row.sid, drawn[i].tobytes().decode("utf-32-le"), None)
            for i, row in enumerate(self.rows)
        ]

    def advance(self) -> None:
        """One step for every row. OpenBLAS multiplies 2 or 3 rows more slowly than 4, and
        those more slowly than one row at a time (bench/serve.py): 2 or 3 rows step one
        by one, and counts above 4 are padded to a multiple of 4; one row is a gemv."""
        rows = len(self.rows)
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
