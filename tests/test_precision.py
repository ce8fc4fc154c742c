"""Precision across machines: a checkpoint trained in bf16 continues in fp32 on a CPU without
bf16 (and the reverse), and the suite passes on CPUs with and without bf16 instructions.

CHARRNN_CPU_BF16=0|1 forces the CPU's bf16 detection (charrnn.device.cpu_has_fast_bf16),
so the path of either kind of CPU runs on any machine; on a CPU without bf16 instructions
"forced on" means torch emulates bf16 (slowly: fine for these tiny models).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import shakespeare_head, tiny_run
from typer.testing import CliRunner, Result

from charrnn.checkpoint import load_checkpoint, save_checkpoint, trained_precision
from charrnn.cli import app
from charrnn.device import _cpuinfo_has_bf16, autocast, resolve_precision
from charrnn.errors import UsageError
from charrnn.training import Notice, RunStarted, StepDone, StopRequest

CPU = torch.device("cpu")
TINY = ["--hidden-size", "16", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16"]
TINY += ["--device", "cpu", "--eval-every", "4", "--sample-length", "0", "-q"]
CHANGED = "the checkpoint trained in bf16; this run continues in fp32"


def cli(*args, bf16: str) -> subprocess.CompletedProcess:
    """`python -m charrnn ARGS` in a subprocess whose CPU has bf16 ("1") or not ("0")."""
    env = {**os.environ, "CHARRNN_CPU_BF16": bf16, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def invoke(*args, bf16: str, monkeypatch) -> Result:
    """The same in this process (faster): the override is read at each call."""
    monkeypatch.setenv("CHARRNN_CPU_BF16", bf16)
    return CliRunner().invoke(app, [str(a) for a in args])


def warnings_of(done: subprocess.CompletedProcess | Result) -> list[str]:
    """The warning lines of a command that succeeded without a traceback."""
    code = done.returncode if isinstance(done, subprocess.CompletedProcess) else done.exit_code
    assert "Traceback" not in done.stderr and code == 0, done.stderr
    if isinstance(done, Result):
        assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return [line for line in done.stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_head(3000), encoding="utf-8")
    return path


# ------------------------------------------------------------------ the detection


def test_auto_follows_the_detection_forced_either_way(monkeypatch):
    monkeypatch.setenv("CHARRNN_CPU_BF16", "0")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setenv("CHARRNN_CPU_BF16", "1")  # read at each call: nothing is cached
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_bf16_without_bf16_instructions_is_refused_naming_the_fix(monkeypatch):
    monkeypatch.setenv("CHARRNN_CPU_BF16", "0")
    with pytest.raises(UsageError, match=r"no bf16 instructions.*use --precision fp32 or auto"):
        resolve_precision("bf16", CPU)


def test_a_bad_override_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("CHARRNN_CPU_BF16", "yes")
    with pytest.raises(UsageError, match="CHARRNN_CPU_BF16='yes'"):
        resolve_precision("auto", CPU)


def test_without_the_override_the_detection_reads_the_cpu(monkeypatch):
    monkeypatch.delenv("CHARRNN_CPU_BF16", raising=False)
    expected = "bf16" if _cpuinfo_has_bf16() else "fp32"
    assert resolve_precision("auto", CPU) == expected


def test_forced_bf16_autocast_runs_an_lstm_where_onednn_has_no_bf16_kernel():
    # On a CPU without AVX512, oneDNN's bf16 LSTM fails ("could not create a primitive
    # descriptor"); autocast() runs torch's own loop there. Either way: no crash, fp32 weights.
    lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 8)
    with autocast(CPU, "bf16"):
        out, _ = lstm(x)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
    assert not torch.equal(out.float(), lstm(x)[0])  # bf16 products, not fp32 ones
    assert lstm.weight_hh_l0.dtype == torch.float32
    assert torch.backends.mkldnn.enabled  # restored after the block


# ------------------------------------------------------------------ the command line


def test_bf16_on_a_cpu_without_it_is_one_usage_error_line(tmp_path, corpus):
    out = tmp_path / "run"
    done = cli(
        "train", corpus, "--out", out, *TINY, "--max-steps", "2", "--precision", "bf16", bf16="0"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: --precision bf16: this CPU has no bf16 instructions")
    assert "--precision fp32" in lines[0] and "slower than fp32" in lines[0]
    assert not (out / "last.pt").exists()


def test_a_bf16_checkpoint_resumes_in_fp32_where_the_cpu_has_no_bf16(tmp_path, corpus):
    out = tmp_path / "run"
    # A tanh RNN: under bf16 autocast it returns its state in bf16 on every CPU (as oneDNN's
    # LSTM does on a CPU with bf16), so this run really carries a bf16 state.
    model = ["--model", "rnn", *TINY]
    first = cli(
        "train", corpus, "--out", out, *model, "--max-steps", "6", "--precision", "bf16", bf16="1"
    )
    assert warnings_of(first) == []
    saved = load_checkpoint(str(out / "last.pt"))
    assert saved["precision"] == "bf16" and saved["train_config"]["precision"] == "bf16"
    assert saved["hidden"] is not None
    assert all(h.dtype == torch.float32 for h in saved["hidden"])  # widened on save

    resumed = cli("train", corpus, "--out", out, "--resume", "--max-steps", "10", bf16="0")
    (line,) = warnings_of(resumed)
    assert line.startswith(f"warning: {CHANGED}: this CPU has no bf16 instructions")
    after = load_checkpoint(str(out / "last.pt"))
    assert after["step"] == 10 and after["precision"] == "fp32"

    again = cli("train", corpus, "--out", out, "--resume", "--max-steps", "12", bf16="0")
    assert warnings_of(again) == []  # said once: the checkpoint now says fp32


def test_precision_may_be_given_on_resume(tmp_path, corpus, monkeypatch):
    out = tmp_path / "run"
    first = ("train", corpus, "--out", out, *TINY, "--max-steps", "4", "--precision", "bf16")
    assert warnings_of(invoke(*first, bf16="1", monkeypatch=monkeypatch)) == []
    args = ("train", corpus, "--out", out, "--resume", "--max-steps", "8", "--precision", "fp32")
    (line,) = warnings_of(invoke(*args, bf16="1", monkeypatch=monkeypatch))
    assert line == f"warning: {CHANGED} (--precision fp32)"
    after = load_checkpoint(str(out / "last.pt"))
    assert after["step"] == 8
    assert after["precision"] == after["train_config"]["precision"] == "fp32"


def old_bf16_checkpoint(trained: str, folder) -> str:
    """`trained`'s last.pt as a bf16 machine wrote it before the state was widened: its
    hidden state in bf16, precision "auto", no "precision" key."""
    ckpt = load_checkpoint(os.path.join(trained, "last.pt"))
    ckpt["hidden"] = [h.to(torch.bfloat16) for h in ckpt["hidden"]]
    ckpt["train_config"]["precision"] = "auto"
    del ckpt["precision"]
    os.makedirs(folder)
    path = os.path.join(folder, "last.pt")
    save_checkpoint(ckpt, path)
    return path


def test_an_old_checkpoint_with_a_bf16_state_resumes_samples_evaluates_and_fine_tunes(
    tmp_path, trained, monkeypatch
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_head(), encoding="utf-8")  # the text `trained` learned
    path = old_bf16_checkpoint(trained, tmp_path / "run")
    assert trained_precision(load_checkpoint(path)) == "bf16"

    def run(*args):
        return invoke(*args, bf16="0", monkeypatch=monkeypatch)

    resumed = run("train", corpus, "--out", tmp_path / "run", "--resume", "--max-steps", "34", "-q")
    (line,) = warnings_of(resumed)
    assert line.startswith(f"warning: {CHANGED}: this CPU has no bf16 instructions")
    after = load_checkpoint(path)
    assert after["step"] == 34 and all(h.dtype == torch.float32 for h in after["hidden"])

    path = old_bf16_checkpoint(trained, tmp_path / "old")
    sample = run("sample", "-c", path, "-n", "40", "--random-seed", "1")
    assert warnings_of(sample) == [] and len(sample.stdout) > 40
    scored = run("eval", "-c", path, corpus)
    assert warnings_of(scored) == [] and "nats/char" in scored.stdout
    tuned = tmp_path / "tuned"
    fine = run("train", corpus, "--out", tuned, "--init-from", path, "--max-steps", "3", "-q")
    assert warnings_of(fine) == []
    assert load_checkpoint(str(tuned / "last.pt"))["precision"] == "fp32"


# ---------------------------------------------------------------------- the library


def test_trained_precision_of_new_and_old_checkpoints():
    state = [torch.zeros(1, 2, 3)]
    assert trained_precision({"precision": "bf16", "train_config": {"precision": "auto"}}) == "bf16"
    assert trained_precision({"train_config": {"precision": "fp32"}}) == "fp32"
    old = {"train_config": {"precision": "auto"}, "hidden": [s.bfloat16() for s in state]}
    assert trained_precision(old) == "bf16"  # what an "auto" run on a bf16 CPU left
    assert trained_precision({"train_config": {"precision": "auto"}, "hidden": state}) is None
    assert trained_precision({"train_config": {"precision": "auto"}, "hidden": None}) is None


@pytest.mark.parametrize("model", ["lstm", "rnn"])
def test_a_bf16_run_resumed_in_bf16_equals_an_uninterrupted_one(tmp_path, monkeypatch, model):
    monkeypatch.setenv("CHARRNN_CPU_BF16", "1")
    text = shakespeare_head(4000)
    opts = {"model": model, "dropout": 0.3, "max_steps": 12, "eval_every": 6, "precision": "bf16"}
    full, _ = tiny_run(text, str(tmp_path / "full"), **opts)
    stop = StopRequest()

    def interrupt(event):
        if isinstance(event, StepDone) and event.step == 5:
            stop.set("SIGINT")

    tiny_run(text, str(tmp_path / "part"), stop=stop, on_event=interrupt, **opts)
    ckpt = load_checkpoint(str(tmp_path / "part" / "last.pt"))
    assert ckpt["step"] == 5 and ckpt["hidden"][0].dtype == torch.float32
    events = []
    resumed, _ = tiny_run(text, str(tmp_path / "part"), resume=ckpt, on_event=events.append, **opts)
    assert not [e for e in events if isinstance(e, Notice)]  # the same precision: nothing said
    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))["model_state"]
    b = load_checkpoint(str(tmp_path / "part" / "last.pt"))["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_val_loss == full.last_val_loss


def test_a_run_resumed_where_bf16_is_missing_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_CPU_BF16", "1")
    text = shakespeare_head(4000)
    tiny_run(text, str(tmp_path / "run"), max_steps=4, eval_every=4, precision="bf16")
    ckpt = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    monkeypatch.setenv("CHARRNN_CPU_BF16", "0")
    events = []
    opts = {"max_steps": 8, "eval_every": 4, "precision": "bf16"}  # as the run asked
    resumed, _ = tiny_run(text, str(tmp_path / "run"), ckpt, on_event=events.append, **opts)
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and notices[0].startswith(CHANGED)
    (started,) = [e for e in events if isinstance(e, RunStarted)]
    assert started.precision == "fp32" and resumed.step == 8


@pytest.mark.skipif(not _cpuinfo_has_bf16(), reason="needs a CPU with bf16 instructions")
def test_on_a_cpu_with_bf16_auto_trains_in_bf16_and_saves_a_float32_state(tmp_path, monkeypatch):
    # oneDNN's LSTM, the fast path, returns its state in bf16: the checkpoint must not.
    monkeypatch.delenv("CHARRNN_CPU_BF16", raising=False)
    events = []
    text = shakespeare_head(4000)
    tiny_run(text, str(tmp_path / "run"), max_steps=4, precision="auto", on_event=events.append)
    assert [e.precision for e in events if isinstance(e, RunStarted)] == ["bf16"]
    ckpt = load_checkpoint(str(tmp_path / "run" / "last.pt"))
    assert ckpt["precision"] == "bf16"
    assert all(h.dtype == torch.float32 for h in ckpt["hidden"])
