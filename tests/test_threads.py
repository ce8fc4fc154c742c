"""The thread count: chosen by timing the steps, kept right as the load changes, never
over the user's choice, and never a change to the numbers (so resume stays exact)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import shakespeare_head

import charrnn
from charrnn import threads
from charrnn.threads import ThreadPilot


class Machine:
    """A simulated machine: the step time for a thread count at a given time, a clock
    that the steps advance, and a log of the counts each step ran with."""

    def __init__(self, pace):
        self.pace, self.now, self.log = pace, 0.0, []

    def clock(self) -> float:
        return self.now

    def run(self, pilot: ThreadPilot, steps: int = 0, until: float = 0.0) -> None:
        while (steps and len(self.log) < steps) or (until and self.now < until):
            pilot.before_step()
            took = self.pace(pilot.current, self.now)
            self.now += took
            self.log.append(pilot.current)
            pilot.after_step(took)


def pilot_on(machine: Machine, busy: bool = False) -> ThreadPilot:
    counts = []
    pilot = ThreadPilot(candidates=(1, 2), set_threads=counts.append, clock=machine.clock)
    pilot.start(busy=busy, current=2)
    return pilot


def test_idle_two_threads_win_and_are_kept():
    machine = Machine(lambda n, t: {1: 0.20, 2: 0.12}[n])
    pilot = pilot_on(machine)
    machine.run(pilot, steps=400)
    assert pilot.choices[0] == 2
    assert machine.log[-100:].count(2) >= 97  # a retrial of one thread: three steps
    # the trials of one thread cost a few slower steps, not a slower run
    assert machine.now <= 1.05 * 400 * 0.12


@pytest.mark.parametrize("busy_guess", [True, False])
def test_a_busy_core_makes_one_thread_win_at_a_small_cost(busy_guess):
    # two threads against another program's busy core: each step waits for the thread
    # that does not get the core (measured: 5 to 20 times slower).
    machine = Machine(lambda n, t: {1: 0.20, 2: 2.0}[n])
    pilot = pilot_on(machine, busy=busy_guess)
    machine.run(pilot, steps=120)
    assert pilot.choices[0] == 1
    # the whole 120 steps within the 1.25x of one thread alone, even when the
    # load average guessed wrong and the run began with two threads
    assert machine.now <= (1.08 if busy_guess else 1.25) * 120 * 0.20
    if busy_guess:  # two threads were tried for one step only, and abandoned
        assert machine.log.count(2) == 1


def test_the_choice_follows_the_load_as_it_comes_and_goes():
    # idle, then another program takes a core from 60 s to 600 s, then leaves
    def pace(n, t):
        busy = 60 <= t < 600
        return {1: 0.20, 2: 1.0 if busy else 0.12}[n]

    machine = Machine(pace)
    pilot = pilot_on(machine)
    machine.run(pilot, until=900)
    times = [0.0]
    for n in machine.log:  # the time each step began
        times.append(times[-1] + pace(n, times[-1]))

    def share_of_one_thread(start, end):
        during = [n for n, t in zip(machine.log, times, strict=False) if start <= t < end]
        return during.count(1) / len(during)

    # (a retrial runs a few steps of the other count: up to 5%)
    assert share_of_one_thread(20, 60) <= 0.05  # idle: two threads
    assert share_of_one_thread(70, 600) >= 0.95  # busy: one, found within seconds
    assert share_of_one_thread(850, 900) <= 0.05  # idle again: two, found by a retrial


def test_the_users_choice_wins(monkeypatch):
    monkeypatch.setattr(threads, "_STARTED_WITH", [2])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.user_threads(2) == 1
    assert ThreadPilot.for_this_machine() is None
    assert threads.quick_choice() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    # torch.set_num_threads(3) in the user's program: the count differs from torch's start
    assert threads.user_threads(3) == 3
    assert threads.user_threads(2) is None


@pytest.mark.parametrize(("command", "policy"), [("--version", "PASSIVE"), ("train", "None")])
def test_the_command_line_sets_a_passive_wait_unless_told_otherwise(tmp_path, command, policy):
    # train keeps OpenMP's spinning wait: its pilot handles a busy machine, and spinning
    # is what makes two threads fast on an idle one
    script = (
        "import os, sys\n"
        f"sys.argv = ['charrnn', '{command}', '--help']\n"
        "from charrnn.__main__ import run\n"
        "try:\n    run()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.split()[-1] == policy
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.stdout.split()[-1] == "ACTIVE"


class Alternating(ThreadPilot):
    """A pilot that changes the thread count at every step: the worst case for exactness."""

    def before_step(self) -> None:
        self._use(2 if self.current == 1 else 1)

    def after_step(self, seconds: float) -> None:
        pass


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


@pytest.mark.parametrize(("model", "input"), [("lstm", "embedding"), ("gru", "onehot")])
def test_thread_counts_give_the_same_bits_and_resume_stays_exact(
    tmp_path, monkeypatch, model, input
):
    tiny_corpus = tmp_path / "text.txt"
    tiny_corpus.write_text(shakespeare_head(30000), encoding="utf-8")
    options = dict(model=model, input=input, hidden_size=96, num_layers=2, batch_size=16)
    options.update(seq_len=32, eval_every=1000, sample_length=0, val_chars=2000, device="cpu")
    one = charrnn.train(tiny_corpus, out=tmp_path / "one", max_steps=14, threads=1, **options)
    two = charrnn.train(tiny_corpus, out=tmp_path / "two", max_steps=14, threads=2, **options)
    monkeypatch.setattr(
        ThreadPilot,
        "for_this_machine",
        classmethod(lambda cls: Alternating(candidates=(1, 2), set_threads=torch.set_num_threads)),
    )
    mixed = tmp_path / "mixed"
    charrnn.train(tiny_corpus, out=mixed, max_steps=7, **options)
    resumed = charrnn.train(tiny_corpus, out=mixed, resume=True, max_steps=14)
    assert one.step == two.step == resumed.step == 14
    a, b, c = (_weights(tmp_path / d / "last.pt") for d in ("one", "two", "mixed"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert torch.equal(a[name], c[name]), name
    assert torch.get_num_threads() == 1  # the suite's own count, given back after each run
