"""`charrnn train ... --nproc-per-node N`: one machine's processes, started by torchrun's own
launcher (torch.distributed.launcher, the API behind the `torchrun` command), not by a
launcher of charrnn's. It is `torchrun --standalone --nproc-per-node N -m charrnn train ...`
with charrnn's manners: the workers report (rank 0 alone), and the outcome comes back as
a `Outcome` the CLI turns into one line and charrnn's exit codes, where plain torchrun
would print its own traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass

from .distributed import LAUNCHER_ENV

# torchrun's agent logs every worker it starts and stops; the workers speak for the run.
_QUIET_LOGGERS = ("torch.distributed",)


@dataclass
class Outcome:
    exit_code: int
    # Set when a worker died of a signal no one sent it through charrnn (SIGKILL, the
    # out-of-memory killer): the run's own processes could not report that.
    killed: tuple[int, str] | None = None  # (rank, signal name)
    signal: str | None = None  # the launcher itself was stopped by this signal


def worker_args(argv: list[str]) -> list[str]:
    """The command line without --nproc-per-node (each worker is one process)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            out.append(arg)
    return out


def run_workers(nproc: int, argv: list[str]) -> Outcome:
    """Run `python -m charrnn <argv>` in `nproc` processes under torchrun's launcher."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # Each of its modules has a logger of its own level: quiet them all.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(_QUIET_LOGGERS):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_ENV] = str(nproc)
    # As torchrun does: processes sharing the cores should not each start a thread per core.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "charrnn", *worker_args(argv))
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        return Outcome(130 if name == "SIGINT" else 143, signal=name)
    except ChildFailedError as e:
        # A worker that ended by a signal other than the SIGTERM with which the agent stops
        # the rest after a failure was killed from outside (SIGKILL, the OOM killer).
        killed = sorted(
            (f.timestamp, r, f.signal_name())
            for r, f in e.failures.items()
            if f.exitcode < 0 and f.signal_name() != "SIGTERM"
        )
        if killed:
            return Outcome(1, killed=killed[0][1:])
        codes = {r: f.exitcode for r, f in e.failures.items() if f.exitcode > 0}
        return Outcome(codes.get(0) or min(codes.values(), default=1))
    return Outcome(0)
