"""How many CPU threads torch's kernels use: chosen by measuring, not by counting cores.

torch starts one OpenMP thread per core, and OpenMP threads wait for work by spinning. On
an idle machine that is fastest; on a machine that is doing anything else it collapses:
with another process busy on one of two cores, the default model trained 2x slower with
two threads than with one (5x at a load average of 5), because each step's parallel
regions wait for a thread that the other process holds. A laptop is such a machine.

So, unless the user has chosen (OMP_NUM_THREADS, MKL_NUM_THREADS, OMP_WAIT_POLICY,
--threads, or torch.set_num_threads in their own code, which always win):
- the commands other than `train` wait passively (OMP_WAIT_POLICY=PASSIVE, set before
  torch is loaded, see `set_wait_policy`) and take one thread when the load average says
  another program holds a core (`quick_choice`);
- training picks, by timing its own steps, the faster of one thread and all of them, and
  times them again every so often and whenever its step time drifts (`ThreadPilot`), so it
  keeps choosing well when the load changes during a long run.

The thread count does not change the numbers: torch's CPU kernels here split work by rows,
not along the sums, so a step gives the same bits with one thread or two
(tests/test_threads.py checks it, which keeps Ctrl-C and --resume exact under the pilot).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# The environment variables that fix the thread count; the user's choice when set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Cores' worth of other work (load average, or measured CPU) that counts a core as taken.
BUSY_CORE = 0.75

# A step slower than this many times the best median so far ends a candidate's trial early:
# with two threads against a busy core a step can take 5 to 10 times longer, and a full
# trial of it would cost more than the choice gains.
ABANDON_RATIO = 2.0
# A chosen setting is timed again when its step time drifts this far from what it was
# when chosen (the load changed), and anyway after RETRIAL_SECONDS, doubled each time the
# trial confirms the choice (up to MAX_RETRIAL_SECONDS).
DRIFT_RATIO = 1.3
RETRIAL_SECONDS = 15.0
MAX_RETRIAL_SECONDS = 240.0
# Trials cost what their slower steps lose: the next one waits at least this many times
# that loss, so trying again costs at most about 3% of the run.
TRIAL_COST_FACTOR = 30.0
MIN_TRIAL_SPACING = 5.0  # seconds after a decision before a drift may start a new trial
TRIAL_STEPS = 3  # steps timed per candidate, in rounds; the median decides
WARMUP_STEPS = 1  # the first step's one-off costs (allocation, kernel setup) are not timed


def user_threads(torch_threads: int | None = None) -> int | None:
    """The thread count the user chose: an environment variable, or torch.set_num_threads
    called by their code (the count differs from the one torch started with); else None."""
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    if torch_threads is not None and torch_threads != _started_with():
        return torch_threads
    return None


def set_wait_policy(training: bool) -> None:
    """How the command line's threads wait, unless the user said otherwise.

    `charrnn train` keeps OpenMP's own spinning wait: its ThreadPilot drops to one thread
    when another program holds a core, and on an idle machine the spinning is what makes
    two threads fast (the passive wait cost 4% of the idle speed here, 15% on an Intel
    Xeon). The other commands, which decide their threads once at the start, wait
    passively: an idle thread sleeps instead of spinning against the machine's other work.
    On a busy machine numpy's BLAS (the sampler's step) keeps to one thread.

    OpenMP and OpenBLAS read these once, when their library is loaded: call it before
    `import torch` and numpy (the command line does; a Python program that imported them
    keeps its own settings).
    """
    if not training:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    chosen = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    if busy_elsewhere() and not any(os.environ.get(name) for name in chosen):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"


_STARTED_WITH: list[int] = []


def _started_with() -> int:
    """The thread count torch had when charrnn first asked (torch's own default, unless
    the caller changed it before charrnn looked)."""
    if not _STARTED_WITH:
        import torch

        _STARTED_WITH.append(torch.get_num_threads())
    return _STARTED_WITH[0]


def busy_elsewhere() -> bool:
    """Whether other work seems to hold a core now (the 1-minute load average, which
    lags: a first guess that the pilot's timing corrects)."""
    try:
        return os.getloadavg()[0] >= BUSY_CORE
    except OSError:  # not on this platform
        return False


def _cores_to_choose_from() -> int | None:
    """torch's starting thread count when charrnn may choose (the user has not, and there
    is more than one core); else None."""
    import torch

    if user_threads(torch.get_num_threads()) is not None or _started_with() < 2:
        return None
    return _started_with()


def quick_choice() -> int | None:
    """For a short command (sample, eval, the views): one thread when other work holds a
    core, else torch's default; None when the user chose."""
    cores = _cores_to_choose_from()
    if cores is None:
        return None
    return 1 if busy_elsewhere() else cores


def use_quick_choice() -> None:
    """Set the thread count of a short command (see quick_choice)."""
    threads = quick_choice()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@dataclass
class ThreadPilot:
    """Chooses the thread count for a repeated step by timing it, and keeps choosing.

    Call `before_step()` before each step and `after_step(seconds)` with the step's time.
    It tries each candidate for TRIAL_STEPS steps (abandoning one that is far slower),
    keeps the fastest, and tries again after a while or when the step time drifts.
    """

    candidates: tuple[int, ...]
    set_threads: Callable[[int], None]
    clock: Callable[[], float] = time.perf_counter
    current: int = 0
    choices: list[int] = field(default_factory=list)  # each decision, for the record
    _trial: list[int] = field(default_factory=list)  # candidates still to time
    _times: dict[int, list[float]] = field(default_factory=dict)
    _chosen_pace: float = 0.0
    _recent: list[float] = field(default_factory=list)
    _next_trial: float = 0.0
    _interval: float = RETRIAL_SECONDS
    _skip: int = WARMUP_STEPS
    _decided_at: float = 0.0
    _drift_after: float = 0.0
    _restore: int = 0

    def __post_init__(self) -> None:
        self.candidates = tuple(sorted(set(self.candidates), reverse=True))
        self.current = self.current or self.candidates[0]
        self._start_trial(first=True)

    def start(self, busy: bool, current: int) -> None:
        """Begin with one thread if other work holds a core, else with the most."""
        self.current = self._restore = current
        first = min(self.candidates) if busy else max(self.candidates)
        self._use(first)
        self._skip = WARMUP_STEPS
        self._start_trial(first=True)

    def finish(self) -> None:
        """Give the process back the thread count it had (a notebook trains again)."""
        if self._restore:
            self._use(self._restore)

    @classmethod
    def for_this_machine(cls) -> ThreadPilot | None:
        """A pilot choosing among 1 and all cores, or None when the user chose the count
        or there is one core."""
        import torch

        cores = _cores_to_choose_from()
        if cores is None:
            return None
        pilot = cls(candidates=(1, cores), set_threads=torch.set_num_threads)
        pilot.start(busy_elsewhere(), torch.get_num_threads())
        return pilot

    def before_step(self) -> None:
        if self._trial and self.current != self._trial[0]:
            self._use(self._trial[0])

    def after_step(self, seconds: float) -> None:
        if self._skip > 0:  # one-off costs after a change of thread count, or at the start
            self._skip -= 1
            return
        if self._trial:
            self._timed(seconds)
        else:
            self._watch(seconds)

    def _timed(self, seconds: float) -> None:
        """Trials go in rounds, one step per candidate: after each round, a candidate far
        slower than the best is dropped, so a bad setting costs one step, not several."""
        self._times[self.current].append(seconds)
        self._trial.pop(0)
        if self._trial:
            return
        paces = {n: statistics.median(t) for n, t in self._times.items() if t}
        best = min(paces.values())
        going = [
            n
            for n, pace in paces.items()
            if pace <= ABANDON_RATIO * best and len(self._times[n]) < TRIAL_STEPS
        ]
        if going:
            self._trial = sorted(going, key=lambda n: n != self.current)  # no change first
        else:
            self._decide()

    def _decide(self) -> None:
        paces = {n: statistics.median(t) for n, t in self._times.items() if t}
        best = min(paces, key=paces.get)
        same = bool(self.choices) and self.choices[-1] == best
        self.choices.append(best)
        self._chosen_pace = paces[best]
        self._recent.clear()
        # A trial that confirms the choice is repeated less often; a change, soon.
        self._interval = min(2 * self._interval, MAX_RETRIAL_SECONDS) if same else RETRIAL_SECONDS
        lost = sum(sum(t) - paces[best] * len(t) for t in self._times.values())
        self._decided_at = self.clock()
        self._next_trial = self._decided_at + max(self._interval, TRIAL_COST_FACTOR * lost)
        self._drift_after = self._decided_at + max(MIN_TRIAL_SPACING, TRIAL_COST_FACTOR / 3 * lost)
        self._use(best)

    def _watch(self, seconds: float) -> None:
        self._recent = [*self._recent[-4:], seconds]
        now = self.clock()
        if now >= self._next_trial or (now >= self._drift_after and self._drifted()):
            self._start_trial()

    def _drifted(self) -> bool:
        """Whether the step time moved so that another count may now win: slower with more
        than one thread (work arrived: fewer may win), faster with fewer than the most
        (work left: more may win). Moves the other way cannot change the choice."""
        if len(self._recent) < 5:
            return False
        ratio = statistics.median(self._recent) / self._chosen_pace
        if ratio > DRIFT_RATIO:
            return self.current > min(self.candidates)
        return ratio < 1 / DRIFT_RATIO and self.current < max(self.candidates)

    def _start_trial(self, first: bool = False) -> None:
        self._times = {n: [] for n in self.candidates}
        # The current setting first (no change, no warm-up), then the others.
        others = [n for n in self.candidates if n != self.current]
        self._trial = [self.current, *others]
        if not first:
            self._skip = 0

    def _use(self, threads: int) -> None:
        # No step is left untimed after a change: waking threads costs microseconds, and
        # an untimed step at a slow setting would double a trial's cost.
        if threads != self.current:
            self.set_threads(threads)
            self.current = threads


@contextmanager
def thread_policy(threads: int | None, on_cpu: bool) -> Iterator[ThreadPilot | None]:
    """A run's threads: `threads` if given (--threads), else a pilot when training on the
    CPU; the process's own count is given back afterwards."""
    import torch

    _started_with()  # torch's own count, noted before this run changes it
    before = torch.get_num_threads()
    pilot = None
    if threads is not None:
        torch.set_num_threads(threads)
    elif on_cpu:
        pilot = ThreadPilot.for_this_machine()
    try:
        yield pilot
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
