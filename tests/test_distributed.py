"""Training in several processes: torchrun + DDP over gloo on this CPU, for real.

Each test starts real processes (torchrun, or `charrnn train --nproc-per-node`, which uses
torchrun's launcher) on a tiny model, so a run takes seconds. The claims: a run's
mathematics does not depend on its process count; checkpoints resume across counts and
exactly under DDP; a signal stops every process at one step with one save; a killed
process ends the run quickly with one message; bad input says one thing once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import shakespeare_head

from charrnn.checkpoint import load_checkpoint
from charrnn.distributed import World, check_batch
from charrnn.errors import UsageError
from charrnn.launch import worker_args
from charrnn.request import check_request

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)

# Small enough for seconds, big enough that 2 x 2 streams are real parallel rows.
MODEL = ["--hidden-size", "24", "--num-layers", "2", "--dropout", "0"]
RUN = ["--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--eval-every", "20"]
RUN += ["--sample-length", "0", "--device", "cpu", "--precision", "fp32", "--val-chars", "3000"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(shakespeare_head(30000), encoding="utf-8")
    return str(path)


def _python(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python ARGS` started with the tests' environment, its output captured."""
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ENV,
    )


def _popen(*args: str) -> subprocess.Popen:
    return _python("-m", "charrnn", *args)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def charrnn(*args: str) -> subprocess.CompletedProcess:
    return _finish(_popen(*args))


def torchrun(*args: str) -> subprocess.CompletedProcess:
    return _finish(_python("-m", "torch.distributed.run", *args))


def val_losses(out) -> dict[int, float]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return {r["step"]: r["val_loss"] for r in map(json.loads, f)}


def close(a: dict[int, float], b: dict[int, float], tol: float = 1e-3) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < tol for k in a)


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> dict:
    """The same 40 steps in 1 process and under torchrun in 2, run side by side."""
    one, two = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("two"))
    alone = _popen("train", corpus, "--out", one, *MODEL, *RUN, "--max-steps", "40", "--force")
    ddp = _python(
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "charrnn", "train", corpus, "--out", two, *MODEL, *RUN, "--max-steps", "40",
    )  # fmt: skip
    _, alone_err = alone.communicate(timeout=120)
    _, ddp_err = ddp.communicate(timeout=120)
    assert alone.returncode == 0, alone_err
    assert ddp.returncode == 0, ddp_err
    return {"one": one, "two": two, "two_stderr": ddp_err}


@pytest.fixture(scope="module")
def one_process(baseline) -> str:
    return baseline["one"]


@pytest.fixture(scope="module")
def two_processes(baseline) -> tuple[str, str]:
    return baseline["two"], baseline["two_stderr"]


def test_two_processes_compute_what_one_does(two_processes, one_process):
    out, stderr = two_processes
    # --batch-size 4 is the total: 2 rows each, the same 4 streams, the same losses.
    assert close(val_losses(out), val_losses(one_process))
    assert len(val_losses(out)) == 2
    # Progress and the outcome once (rank 0), not once per process.
    assert stderr.count("done: 40 steps") == 1
    assert stderr.count("step 20 |") == 1
    assert "on 2 CPU processes (DDP" in stderr
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert [tuple(h.shape) for h in ckpt["hidden"]] == [(2, 4, 24), (2, 4, 24)]
    assert len(ckpt["rng"]["ranks"]) == 2  # each process's dropout RNG, for an exact resume
    alone = load_checkpoint(os.path.join(one_process, "last.pt"))
    for mine, theirs in zip(ckpt["hidden"], alone["hidden"], strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)  # the rows gathered in stream order


def test_a_run_resumes_across_process_counts(corpus, one_process, two_processes, tmp_path):
    # 2 processes -> 1, and 1 -> 2, both on to step 60: the same continuation.
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    shutil.copytree(two_processes[0], two)
    shutil.copytree(one_process, one)
    # Side by side: each launch spends much of its time starting and stopping processes.
    runs = [
        _popen("train", corpus, "--out", two, "--resume", "--max-steps", "60"),
        _popen("train", corpus, "--out", one, "--resume", "--max-steps", "60",
               "--nproc-per-node", "2"),
    ]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    assert close(val_losses(two), val_losses(one))
    assert max(val_losses(two)) == 60


def _start(corpus: str, out: str, *extra: str, model: list[str] = MODEL) -> subprocess.Popen:
    return _popen("train", corpus, "--out", out, *model, *RUN, *extra)


def _wait_for_step(out: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the run's first validation is on disk."""
    path = os.path.join(out, "metrics.jsonl")
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return
        time.sleep(0.05)
    raise AssertionError("the run never reached its first validation")


def test_sigterm_stops_every_process_at_one_step_and_resumes_exactly(corpus, tmp_path):
    # Dropout on: the resumed run is bit-for-bit the same only if each process gets its
    # own RNG state back, and the hidden state of its own rows.
    model = [*MODEL[:-1], "0.2"]
    # A validation (and save) every 10 steps: the signal comes after the first, with 50
    # steps to spare before the limit.
    limit = ["--max-steps", "60", "--eval-every", "10"]
    whole = str(tmp_path / "whole")  # the uninterrupted run, side by side with the other
    uninterrupted = _start(corpus, whole, *limit, "--nproc-per-node", "2", model=model)
    cut = str(tmp_path / "cut")
    proc = _start(corpus, cut, *limit, "--nproc-per-node", "2", model=model)
    _wait_for_step(cut, proc)
    proc.send_signal(signal.SIGTERM)  # to the launcher: torchrun's agent passes it on
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.count("stopped by SIGTERM at step") == 1
    assert "--nproc-per-node 2" in err  # the command to continue
    stopped_at = load_checkpoint(os.path.join(cut, "last.pt"))["step"]
    assert 10 <= stopped_at < 60

    again = charrnn("train", corpus, "--out", cut, "--resume", "--nproc-per-node", "2")
    assert again.returncode == 0, again.stderr
    _, err = uninterrupted.communicate(timeout=120)
    assert uninterrupted.returncode == 0, err
    a = load_checkpoint(os.path.join(whole, "last.pt"))["model_state"]
    b = load_checkpoint(os.path.join(cut, "last.pt"))["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_process_ends_the_run_at_once_with_one_message(corpus, tmp_path):
    out = str(tmp_path / "run")
    proc = _start(corpus, out, "--max-steps", "100000", "--nproc-per-node", "2")
    _wait_for_step(out, proc)
    found = subprocess.run(
        ["pgrep", "-f", "--", f"charrnn train {corpus} --out {out}"], capture_output=True, text=True
    ).stdout.split()
    workers = sorted(int(pid) for pid in found if int(pid) != proc.pid)
    assert len(workers) == 2
    began = time.monotonic()
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - began < 30  # no hang in a collective
    assert proc.returncode == 1
    assert err.count("error:") == 1, err
    assert "was killed by SIGKILL" in err and "Traceback" not in err
    # The newest save resumes; here under a time limit, which rank 0's clock decides for
    # both processes (a process that stopped alone would leave the other waiting).
    again = charrnn(
        "train", corpus, "--out", out, "--resume", "--time-limit", "4s", "--nproc-per-node", "2"
    )
    assert again.returncode == 0, again.stderr
    assert "(time limit" in again.stderr


# Loaded by every Python process started with it on PYTHONPATH: the worker of rank 1
# raises at step 30, as a bug or an out-of-memory error on one GPU would.
FAULT = """
import os
if os.environ.get("RANK") == "1":
    from charrnn.training import loop
    learning_rate = loop.learning_rate
    def failing(step, config, plan):
        if step == 30:
            raise RuntimeError("injected fault at step 30")
        return learning_rate(step, config, plan)
    loop.learning_rate = failing
"""


def test_an_exception_in_one_process_is_named_by_rank_0(corpus, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    out = str(tmp_path / "run")
    began = time.monotonic()
    hooked = {**ENV, "PYTHONPATH": os.pathsep.join([str(hook), *sys.path])}
    done = _finish(
        _python("-m", "charrnn", "train", corpus, "--out", out, *MODEL, *RUN,
                "--max-steps", "100000", "--nproc-per-node", "2", env=hooked)
    )  # fmt: skip
    assert time.monotonic() - began < 60
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "process rank 1 failed (RuntimeError: injected fault at step 30)" in errors[0]
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == 20  # the newest save


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["/no/such/corpus.txt"], 1, "not found"),
        (["CORPUS", "--batch-size", "5"], 2, "does not divide among 2 processes"),
    ],
)
def test_bad_input_says_one_thing_once(corpus, tmp_path, args, code, says):
    args = [corpus if a == "CORPUS" else a for a in args]
    out = str(tmp_path / "run")
    shortcut = charrnn("train", *args, "--out", out, "--nproc-per-node", "2")
    assert shortcut.returncode == code
    assert shortcut.stderr.count("error:") == 1 and says in shortcut.stderr, shortcut.stderr
    assert "Traceback" not in shortcut.stderr
    assert not os.path.exists(os.path.join(out, "last.pt"))


def test_plain_torchrun_bad_input_has_no_charrnn_traceback(tmp_path):
    done = torchrun(
        "--standalone", "--nproc-per-node", "2", "-m", "charrnn", "train", "/no/such.txt",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("error: corpus") == 1  # rank 0's line; rank 1 stays quiet
    assert "charrnn/" not in done.stderr.split("error: corpus")[1].split("\n", 1)[0]
    assert 'charrnn/api.py"' not in done.stderr and "charrnn/cli/" not in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A user's own script calling the Python API; torchrun starts it like any other.
API_SCRIPT = """
import json, os, sys
import charrnn
corpus, out = sys.argv[1], sys.argv[2]
result = charrnn.train(
    corpus, out, hidden_size=24, num_layers=2, dropout=0.0, batch_size=4, seq_len=16,
    lr=1e-2, eval_every=20, sample_length=0, device="cpu", precision="fp32",
    val_chars=3000, max_steps=40,
)
print(json.dumps({"rank": int(os.environ["RANK"]), "best": result.best_val_loss,
                  "history": len(result.history), "step": result.step}))
"""


def test_two_nodes_meet_at_a_rendezvous(corpus, one_process, tmp_path):
    """Two torchrun invocations, as two machines of a cluster would start them, running a
    script that calls charrnn.train(): the library works under torchrun as the CLI does."""
    out = str(tmp_path / "nodes")
    script = tmp_path / "train.py"
    script.write_text(API_SCRIPT)
    rdzv = [
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "charrnn-test",
    ]  # fmt: skip
    cmd = ["-m", "torch.distributed.run", *rdzv, str(script), corpus, out]
    nodes = [_python(*cmd) for _ in range(2)]
    results = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results
    assert close(val_losses(out), val_losses(one_process))
    # Every process returns rank 0's result (each node printed its own process's).
    printed = sorted((json.loads(o.strip().splitlines()[-1]) for o, _ in results), key=str)
    assert {p["rank"] for p in printed} == {0, 1}
    assert all(p["step"] == 40 and p["history"] == 2 for p in printed)
    assert printed[0]["best"] == printed[1]["best"] == min(val_losses(out).values())


# ------------------------------------------------------------------- no processes


def test_world_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert World.from_env() == World()  # plain `charrnn`: one process, nothing to join
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    world = World.from_env()
    assert (world.rank, world.size, world.local_rank, world.launched) == (3, 4, 1, True)
    assert not world.is_main and not world.is_local_main
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="torchrun"):
        World.from_env()


def test_stdin_cannot_be_shared_by_processes():
    with pytest.raises(UsageError, match="stdin"):
        check_request("-", False, False, None, "utf-8", {}, World(size=2, launched=True))
    assert check_request("-", False, False, None, "utf-8", {}, World())[2] == ["-"]


def test_batch_size_must_divide_among_processes():
    check_batch(24, World(size=4, launched=True))
    with pytest.raises(UsageError, match="multiple of 4"):
        check_batch(10, World(size=4, launched=True))


def test_the_launcher_passes_every_option_but_its_own():
    argv = ["train", "a.txt", "--nproc-per-node", "2", "--out", "x", "--nproc-per-node=3", "-q"]
    assert worker_args(argv) == ["train", "a.txt", "--out", "x", "-q"]


def test_the_shortcut_under_torchrun_is_refused(corpus, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from charrnn.cli import app

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = str(tmp_path / "run")
    result = CliRunner().invoke(app, ["train", corpus, "--out", out, "--nproc-per-node", "2"])
    assert result.exit_code == 2
    assert "torchrun has already started the processes" in result.output
    assert not os.path.exists(out)


def test_each_process_takes_its_own_gpu(monkeypatch):
    """Under torchrun, CUDA means cuda:LOCAL_RANK; one GPU named for several processes,
    or more processes than GPUs, is refused (the decisions alone: no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = torch.device("cuda")
    world = World(rank=3, size=4, local_rank=1, local_size=2, launched=True)
    assert world.device(cuda, "cuda") == torch.device("cuda", 1)
    assert world.device(torch.device("cpu"), "cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device cuda"):
        world.device(torch.device("cuda", 1), "cuda:1")
    alone = World(rank=1, size=2, local_rank=0, local_size=1, launched=True)
    assert alone.device(torch.device("cuda", 1), "cuda:1") == torch.device("cuda", 1)
    crowded = World(rank=2, size=3, local_rank=2, local_size=3, launched=True)
    with pytest.raises(UsageError, match="only 2 GPU"):
        crowded.device(cuda, "cuda")


def test_under_torchrun_rank_0_chooses_the_model_and_every_process_trains_it(corpus, tmp_path):
    """No size named: rank 0 times the device and chooses, the choice reaches the other
    process (different models would fail DDP's first all-reduce), one start line says it."""
    out = str(tmp_path / "run")
    proc = torchrun(
        "--standalone", "--nproc-per-node", "2", "-m", "charrnn", "train", corpus, "--out",
        out, *RUN, "--time-limit", "60s", "--max-steps", "12",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("model: ")]
    assert len(said) == 1 and "and 1m or 12 steps on 2 processes" in said[0], proc.stderr
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    layers, width = ckpt["model_choice"]["num_layers"], ckpt["model_choice"]["hidden_size"]
    assert said[0].startswith(f"model: {layers} x {width} LSTM")
    assert ckpt["model_config"]["hidden_size"] == width and ckpt["step"] == 12
