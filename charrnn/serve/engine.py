"""Continuous batching across lanes: the streams being generated advance together.

The engine owns no model step itself. It runs lanes (lane.py), a process each, one per
usable core (at most MAX_LANES); each lane steps its streams in one batched step. A new
stream goes to the lane with the fewest streams, and starts at that lane's next step
after its seed has been fed; when every row is taken it waits in a queue, and when the
queue is full too, submit() raises EngineBusy. A cancelled stream (its client hung up)
leaves at its lane's next step, so it costs nothing after that.

Each lane's text comes back a few dozen times a second, read by one thread per lane, and
goes to `deliver` (the HTTP layer hands it to the event loop).
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..config import SampleConfig
from ..threads import BUSY_CORE
from .lane import FLUSH_SECONDS

# What a stream's sink is told, from a lane's reader thread: text to append, and once,
# with the last text, why the stream ended ("length", "stop", "shutdown", "error"); None
# while it goes on. A stream whose reader cancelled it is told nothing more.
Sink = Callable[[str, "str | None"], None]

MAX_LANES = 4  # lane processes, at most (see default_lanes)
START_SECONDS = 120.0  # for a lane process to import torch and say it is ready
LANE_COMMAND = "import sys; from charrnn.serve.lane import lane_main; lane_main(int(sys.argv[1]))"


class EngineBusy(Exception):
    """Every row and every place in the queue is taken: try again shortly."""


class EngineError(RuntimeError):
    """A lane process could not start."""


@dataclass(frozen=True)
class Job:
    """A checked generate request (see serve.requests)."""

    seed: str
    seed_ids: list[int]
    config: SampleConfig


class Stream:
    """One request's sample, as the engine sees it: where it runs and whom to tell."""

    def __init__(self, job: Job, sink: Sink, sid: int, engine: Engine):
        self.job, self.sink, self.sid = job, sink, sid
        self.engine = engine
        self.lane: _LaneProcess | None = None  # None while it waits in the queue
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating for this stream (its reader is gone); takes effect next step."""
        if not self.cancelled:
            self.cancelled = True
            self.engine._cancel(self)


@dataclass
class Stats:
    active: int = 0  # streams generating now
    queued: int = 0  # accepted, waiting for a row
    started: int = 0
    finished: int = 0
    cancelled: int = 0  # left because their reader went away
    chars: int = 0  # characters generated, all streams
    steps: int = 0  # batched steps run, all lanes


class Engine:
    """The lanes, the streams and the queue; start() before submit()."""

    def __init__(
        self,
        model: Any,
        max_streams: int = 64,
        max_queue: int = 64,
        deliver: Callable[[list[tuple[Stream, str, str | None]]], None] | None = None,
        flush_seconds: float = FLUSH_SECONDS,
        lanes: int | None = None,
    ):
        self.model = model  # a charrnn.api.Model on the CPU
        self.max_streams, self.max_queue = max_streams, max_queue
        # Called from a lane's reader thread with [(stream, text, end)], a few dozen times
        # a second per lane; by default each stream's sink is called in turn.
        self.deliver = deliver or call_sinks
        self.flush_seconds = flush_seconds
        self.streams: dict[int, Stream] = {}  # by sid: those in a lane or the queue
        self.pending: deque[Stream] = deque()
        self.stats = Stats()
        self.lock = threading.Lock()
        self.closing: str | None = None  # "shutdown", or "error" once a lane failed
        self.error: str | None = None
        self.sids = itertools.count()
        self.lanes = [_LaneProcess(self, i) for i in range(lanes or default_lanes())]
        # New streams go to as many lanes as there are cores that other programs leave
        # free: on a 2-core machine with one core busy, two lanes were 13% slower than one.
        self.room = Room(len(self.lanes), self._pids)
        self.stopped = threading.Event()  # set by close(): the room's watch ends

    def start(self) -> Engine:
        """Start the lane processes and wait until each is ready to step."""
        for lane in self.lanes:
            lane.start(self.model)
        for lane in self.lanes:
            lane.wait_ready()
        threading.Thread(target=self.room.watch, args=(self.stopped,), daemon=True).start()
        return self

    def submit(self, job: Job, sink: Sink) -> Stream:
        """Queue a stream; it starts at the next step of a lane with a free row. Raises
        EngineBusy when the rows and the queue are full."""
        with self.lock:
            if self.closing:
                raise EngineBusy("the server is shutting down")
            if self.stats.active + len(self.pending) >= self.max_streams + self.max_queue:
                raise EngineBusy(f"{self.max_streams} streams running, {self.max_queue} waiting")
            stream = Stream(job, sink, next(self.sids), self)
            self.streams[stream.sid] = stream
            self.pending.append(stream)
            self._dispatch()
        return stream

    def close(self, timeout: float = 5.0) -> None:
        """Cut every stream (each is told "shutdown") and stop the lanes."""
        self.stopped.set()
        with self.lock:
            self.closing = self.closing or "shutdown"
            queued = self._take_queue()
        self.deliver([(s, "", self.closing) for s in queued])
        for lane in self.lanes:
            lane.send(("close", self.closing))
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.stop(max(0.0, deadline - time.monotonic()))

    def snapshot(self) -> dict:
        with self.lock:
            return dict(vars(self.stats))

    def _pids(self) -> list[int]:
        return [os.getpid()] + [lane.process.pid for lane in self.lanes if lane.process]

    # ------------------------------------------------------- under the lock, or from lanes

    def _dispatch(self) -> None:
        """Move waiting streams into free rows, each to the lane with the fewest (locked)."""
        while self.pending and self.stats.active < self.max_streams:
            stream = self.pending.popleft()
            if stream.cancelled:
                del self.streams[stream.sid]
                self.stats.cancelled += 1
                continue
            lane = min(self.lanes[: self.room.lanes()], key=lambda lane: lane.rows)
            lane.rows += 1
            stream.lane = lane
            self.stats.active += 1
            self.stats.started += 1
            lane.send(("join", stream.sid, stream.job))
        self.stats.queued = len(self.pending)

    def _cancel(self, stream: Stream) -> None:
        with self.lock:
            if stream.lane is not None and stream.sid in self.streams:
                stream.lane.send(("cancel", stream.sid))

    def _received(self, lane: _LaneProcess, items: list, chars: int, steps: int) -> None:
        """A lane's text: to the sinks; the rows of the streams that ended are freed."""
        out, ended = [], []
        with self.lock:
            for sid, text, end in items:
                stream = self.streams.get(sid)
                if stream is None:
                    continue
                if end is not None:
                    ended.append(stream)
                    del self.streams[sid]
                if not stream.cancelled:
                    out.append((stream, text, end))
            for stream in ended:
                lane.rows -= 1
                self.stats.active -= 1
                if stream.cancelled:
                    self.stats.cancelled += 1
                else:
                    self.stats.finished += 1
            self.stats.chars += chars
            self.stats.steps += steps
            if ended and not self.closing:
                self._dispatch()
        self.deliver(out)

    def _lane_failed(self, lane: _LaneProcess, error: str) -> None:
        """A lane died or raised: every stream ends with "error", the engine closes."""
        with self.lock:
            if self.closing is None:
                self.closing, self.error = "error", error
            mine = [s for s in self.streams.values() if s.lane is lane]
            for stream in mine:
                del self.streams[stream.sid]
            self.stats.active -= len(mine)
            lane.rows = 0
            queued = self._take_queue()
        self.deliver([(s, "", "error") for s in [*mine, *queued] if not s.cancelled])
        for other in self.lanes:
            other.send(("close", "error"))

    def _take_queue(self) -> list[Stream]:
        queued = list(self.pending)
        self.pending.clear()
        for stream in queued:
            self.streams.pop(stream.sid, None)
        self.stats.queued = 0
        return queued


def default_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_lanes() -> int:
    """One lane per usable core, at most MAX_LANES (each lane process holds its own copy
    of the weights and of torch, a few hundred MB)."""
    return max(1, min(default_cores(), MAX_LANES))


class Room:
    """How many lanes new streams may use: the usable cores less those other programs keep
    busy (at normal priority: niced work gives way), measured over the last LOOK_SECONDS
    from /proc/stat less this server's own CPU time, by a thread (watch). Without /proc,
    every lane."""

    LOOK_SECONDS = 2.0
    BUSY = BUSY_CORE  # a core that busy is taken, as for the other commands' threads

    def __init__(self, lanes: int, pids: Callable[[], list[int]]):
        self.max_lanes, self.pids = lanes, pids
        self.cores = default_cores()
        self.room = lanes
        self.last: tuple[float, float, float] | None = None  # (time, busy, ours) in seconds

    def lanes(self) -> int:
        return self.room

    def look(self) -> None:
        """The cores others used since the last look set the room."""
        others = self._others(time.monotonic()) if self.max_lanes > 1 else None
        if others is not None:
            taken = int(others + 1 - self.BUSY)
            self.room = max(1, min(self.max_lanes, self.cores - taken))

    def watch(self, stop: threading.Event) -> None:
        self.look()  # the first look: what the next ones compare with
        while not stop.wait(self.LOOK_SECONDS):
            self.look()

    def _others(self, now: float) -> float | None:
        """Cores other programs used since the last look, or None (first look, no /proc)."""
        try:
            busy, ours = cpu_busy_seconds(), sum(cpu_seconds_of(pid) for pid in self.pids())
        except (OSError, ValueError, IndexError):
            return None
        last, self.last = self.last, (now, busy, ours)
        if last is None or now <= last[0]:
            return None
        return max(0.0, (busy - last[1]) - (ours - last[2])) / (now - last[0])


def cpu_busy_seconds(stat: str | None = None) -> float:
    """CPU seconds all cores spent running programs at normal priority or in the kernel:
    /proc/stat's user + system + irq + softirq (not idle, iowait, niced work or steal)."""
    if stat is None:
        with open("/proc/stat") as f:
            stat = f.readline()
    fields = [int(v) for v in stat.split()[1:8]]  # user nice system idle iowait irq softirq
    user, _, system, _, _, irq, softirq = fields
    return (user + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_of(pid: int) -> float:
    """A process's user + system CPU seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _LaneProcess:
    """The engine's end of one lane: the process, its pipe, and the thread reading it."""

    def __init__(self, engine: Engine, index: int):
        self.engine, self.index = engine, index
        self.rows = 0  # streams sent to this lane and not yet ended (under the lock)
        self.send_lock = threading.Lock()
        self.process: Any = None
        self.conn: Any = None
        self.reader: threading.Thread | None = None
        self.ready = threading.Event()
        self.gone = False  # the pipe is closed: nothing more can be sent

    def start(self, model: Any) -> None:
        # A plain subprocess on one end of a socket pair, not multiprocessing's spawn:
        # spawn runs the parent's main script again, which breaks a script or notebook
        # that builds an Engine without an `if __name__ == "__main__"` guard.
        parent, child = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", LANE_COMMAND, str(child.fileno())],
            pass_fds=[child.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn = Connection(parent.detach())
        # The weights by value (plain pickle: torch's own reductions would share memory
        # with a process that multiprocessing did not start).
        self.conn.send_bytes(
            pickle.dumps((model.module, model.vocab.chars, self.engine.flush_seconds))
        )
        self.reader = threading.Thread(
            target=self._read, name=f"charrnn-lane-{self.index}-reader", daemon=True
        )
        self.reader.start()

    def wait_ready(self) -> None:
        if not self.ready.wait(START_SECONDS) or self.engine.error:
            self.engine.close(timeout=1.0)
            raise EngineError(
                f"lane {self.index} did not start: {self.engine.error or 'no answer'}"
            )

    def send(self, message: tuple) -> None:
        with self.send_lock:
            if self.gone or self.conn is None:
                return
            try:
                self.conn.send(message)
            except OSError:  # the lane died: its reader reports it
                self.gone = True

    def stop(self, timeout: float) -> None:
        if self.reader is not None:
            self.reader.join(timeout)
        if self.process is not None:
            try:
                self.process.wait(0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(1.0)

    def _read(self) -> None:
        engine = self.engine
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "text":
                    engine._received(self, *message[1:])
                elif message[0] == "ready":
                    self.ready.set()
                else:  # ("error", text)
                    engine._lane_failed(self, f"lane {self.index}: {message[1]}")
                    self.ready.set()
                    return
        except (EOFError, OSError):
            with self.send_lock:
                self.gone = True
            if self.rows or not engine.closing:
                code = self.process.poll() if self.process else None
                engine._lane_failed(self, f"lane {self.index} ended (exit code {code})")
            self.ready.set()


def call_sinks(items: list[tuple[Stream, str, str | None]]) -> None:
    """Each stream's piece to its sink, in order."""
    for stream, text, end in items:
        stream.sink(text, end)


def wait_idle(engine: Engine, timeout: float) -> bool:
    """Whether the engine has no active or queued stream within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = engine.snapshot()
        if snap["active"] == 0 and snap["queued"] == 0:
            return True
        time.sleep(0.01)
    return False
