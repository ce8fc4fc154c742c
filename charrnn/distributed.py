"""Several processes training one model: torchrun's processes, joined by torch.distributed.

charrnn does not launch or connect processes itself. `torchrun` (or `charrnn train
--nproc-per-node N`, which calls torchrun's own launcher, see charrnn.launch) starts them
and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each one's
environment; `World.from_env()` reads them and `World.connect()` joins the process group
(NCCL between GPUs, gloo between CPUs). Gradients are averaged by DDP.

What a run computes does not depend on how many processes run it: --batch-size counts the
streams of all of them, and process r takes rows r*B/N ... (r+1)*B/N - 1 of the one global
layout (charrnn.batches), so the averaged gradient is the one-process gradient of the whole
batch. Everything that depends on a clock (the --time-limit plan, when to stop) or on the
disk (checkpoints, metrics.jsonl, progress) is rank 0's; the others follow what it decides.

A single process (no torchrun) is `World()`: every method below is then a no-op, so the
one-process path runs exactly the code it always ran.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import CharRNNError, UsageError

T = TypeVar("T")

# How long a process waits for the others at one collective before giving up. Generous:
# rank 0 alone prepares a corpus's id file, validates and saves while the others wait. A
# process that dies is noticed much sooner (its connections close, or torchrun's agent,
# which watches every process, stops the rest).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
# charrnn's own messages (stop, plan, loss, gathered state) go by gloo, as CPU tensors.
_COMM = torch.device("cpu")
# Set by `charrnn train --nproc-per-node`, so a worker knows who reports its failures.
LAUNCHER_ENV = "CHARRNN_LAUNCHER_NPROC"

# Codes of the stop agreement below (the larger wins when processes disagree).
_STOP_CODES = {None: 0, "interrupted": 1, "SIGINT": 2, "SIGTERM": 3}
_STOP_NAMES = {v: k for k, v in _STOP_CODES.items()}


class DistributedError(CharRNNError):
    """The processes of a run lost each other (one died or was killed). `named`: the
    message names the process that failed and why (it left word before it ended)."""

    def __init__(self, message: str, named: bool = False):
        super().__init__(message)
        self.named = named


class FollowerExit(CharRNNError):
    """A process other than rank 0 stops because the run failed: rank 0 says why, once."""

    def __init__(self, exit_code: int):
        super().__init__("")
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launched: bool = False  # started by torchrun (even a single process)

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        try:
            return cls(
                rank=int(env["RANK"]),
                size=int(env["WORLD_SIZE"]),
                local_rank=int(env.get("LOCAL_RANK", "0")),
                local_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
                launched=True,
            )
        except ValueError:
            raise UsageError(
                "RANK/WORLD_SIZE/LOCAL_RANK in the environment are not numbers: start charrnn "
                "with torchrun, or unset them"
            ) from None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    # -- joining

    def device(self, resolved: torch.device, typed: str) -> torch.device:
        """The device of this process: under torchrun, CUDA means cuda:LOCAL_RANK."""
        if not self.launched or resolved.type != "cuda":
            return resolved
        if ":" in typed and self.local_size == 1:
            return resolved  # one process on this machine, on the GPU it names
        if ":" in typed:
            raise UsageError(
                f"--device {typed} names one GPU, but torchrun gives each of its "
                f"{self.local_size} processes on this machine its own: use --device cuda"
            )
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise UsageError(
                f"{self.local_size} processes on this machine but only {count} GPU(s): give "
                f"--nproc-per-node {count} or fewer (one GPU per process), or --device cpu"
            )
        return torch.device("cuda", self.local_rank)

    def connect(self) -> None:
        """Join the process group. DDP's gradients travel by NCCL between GPUs; charrnn's
        own few messages per step (stop, plan, loss) and the checkpoint's gathered state
        travel by gloo as CPU tensors, whichever device trains."""
        if not self.launched or dist.is_initialized():
            return
        if torch.cuda.is_available():
            if self.local_rank < torch.cuda.device_count():
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)

    def close(self) -> None:
        if self.launched and dist.is_initialized():
            gc.collect()  # DDP's reducer (in a reference cycle) holds the group too
            dist.destroy_process_group()

    # -- agreeing

    def together(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every process, then agree on the outcome: if it raised charrnn's
        error on any process, every process raises. Rank 0 raises the first such error
        (naming the rank when it is another's), the others a silent FollowerExit, so the
        user reads one error line, not one per process."""
        if not self.launched:
            return fn()
        error: CharRNNError | None = None
        try:
            result = fn()
        except CharRNNError as e:
            error = e
        outcomes: list[Any] = [None] * self.size
        mine = None if error is None else (type(error).__name__, str(error), error.exit_code)
        self._collective(dist.all_gather_object, outcomes, mine)
        failed = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
        if not failed:
            return result
        rank, (_, message, code) = failed[0]
        if not self.is_main:
            raise FollowerExit(code)
        if error is not None and rank == 0:
            raise error
        raised = CharRNNError(f"process rank {rank}: {message}")
        raised.exit_code = code
        raise raised

    def local_first(self, fn: Callable[[], T]) -> T:
        """`fn` on each machine's first process, then on the others (which then find what
        it made: the corpus's id file, mapped by all of them)."""
        if not self.launched:
            return fn()
        first = self.together(lambda: fn() if self.is_local_main else None)
        later = self.together(lambda: None if self.is_local_main else fn())
        return first if self.is_local_main else later

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every process (files only rank 0 reads: checkpoints)."""
        if not self.launched:
            return obj
        box = [obj if self.is_main else None]
        self._collective(dist.broadcast_object_list, box, 0)
        return box[0]

    def agree_step(self, stop: str | None, decision: str | None, plan: int | None) -> tuple:
        """Once per step, every process learns (stop signal, rank 0's decision, rank 0's
        plan): a signal that reached any process stops all of them at the same step, and
        the clock-dependent choices are rank 0's alone."""
        if not self.launched:
            return stop, decision, plan
        main = self.is_main
        values = torch.tensor(
            [
                _STOP_CODES.get(stop, 1),
                (_DECISIONS.index(decision) + 1) if main and decision in _DECISIONS else 0,
                (plan + 1) if main and plan is not None else 0,
            ],
            dtype=torch.int64,
            device=_COMM,
        )
        self._collective(dist.all_reduce, values, op=dist.ReduceOp.MAX)
        signal, decided, planned = values.tolist()
        return (
            _STOP_NAMES.get(signal),
            _DECISIONS[decided - 1] if decided else None,
            planned - 1 if planned else None,
        )

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the processes (the whole batch's loss)."""
        if not self.launched or self.size == 1:
            return value
        total = value.detach().to(_COMM, torch.float64).reshape(1)
        self._collective(dist.all_reduce, total)
        return (total / self.size).reshape(())

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's (L, b, H) rows joined in rank order: (L, b * size, H)."""
        if not self.launched or self.size == 1:
            return tensor
        local = tensor.detach().to(_COMM).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        self._collective(dist.all_gather, parts, local)
        return torch.cat(parts, dim=1)

    def gather(self, obj: Any) -> list[Any]:
        if not self.launched:
            return [obj]
        out: list[Any] = [None] * self.size
        self._collective(dist.all_gather_object, out, obj)
        return out

    def note_failure(self, error: BaseException) -> None:
        """Leave word of why this process ends in torchrun's store (its agent keeps it
        after this process is gone), so rank 0 can say which process failed and why."""
        if not self.launched or not dist.is_initialized():
            return
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(_FAILED.format(self.rank), f"{type(error).__name__}: {error}"[:300])
        except Exception:  # best effort: the store may be gone too
            pass

    def failure_notes(self) -> list[tuple[int, str]]:
        """(rank, why) of the other processes that left word of a failure."""
        try:
            store = dist.distributed_c10d._get_default_store()
            keys = [_FAILED.format(r) for r in range(self.size) if r != self.rank]
            return [
                (int(key.rsplit("/", 1)[1]), store.get(key).decode(errors="replace"))
                for key in keys
                if store.check([key])
            ]
        except Exception:
            return []

    def _collective(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (RuntimeError, ConnectionError) as e:  # gloo/NCCL: a peer went away
            raise lost_contact(self, e) from None


_FAILED = "charrnn/failed/{}"  # the store key of a process's failure note
# Rank 0's decisions that are not signals: why the run stops now.
_DECISIONS = ("max_steps", "epochs", "time_limit")


def is_lost_peer(error: BaseException) -> bool:
    """A failed collective (DDP's gradient all-reduce, say) because a process went away,
    as opposed to an error of this process's own (out of memory, a bug)."""
    names = ("DistBackendError", "DistNetworkError", "DistStoreError")
    if type(error).__name__ in names:
        return True
    text = str(error)
    return any(s in text for s in ("Connection closed", "Connection reset", "gloo", "NCCL"))


def lost_contact(world: World, error: BaseException) -> DistributedError:
    notes = world.failure_notes()
    if notes:
        rank, why = notes[0]
        return DistributedError(
            f"process rank {rank} failed ({why}); the others were stopped; the newest "
            "last.pt is intact: fix the cause, then continue with --resume",
            named=True,
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    detail = text.split("] ", 1)[-1][:100]  # gloo's message, without its source location
    return DistributedError(
        f"process rank {world.rank} lost contact with the other processes of this run "
        f"({detail}): one of them failed or was killed (torchrun's report names it); the "
        "newest last.pt is intact: continue with --resume"
    )


def is_reporter() -> bool:
    """True in the process that speaks for the run: the only one, or torchrun's rank 0."""
    try:
        return World.from_env().is_main
    except UsageError:
        return True


def check_batch(batch_size: int, world: World, resumed: bool = False) -> None:
    """The streams (--batch-size, all processes together) must divide among the processes.
    A resumed run keeps its batch size, so the fix there is the number of processes."""
    if batch_size % world.size == 0:
        return
    if resumed:
        counts = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        listed = ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}" if len(counts) > 1 else "1"
        raise UsageError(
            f"the run has --batch-size {batch_size} ({batch_size} streams), which does not "
            f"divide among {world.size} processes, and a resumed run keeps its batch size: "
            f"resume it on {listed} processes (torchrun --nproc-per-node N)"
        )
    raise UsageError(
        f"--batch-size {batch_size} does not divide among {world.size} processes: give a "
        f"multiple of {world.size} (it counts the streams of all processes together)",
        field="batch_size",
    )
