"""charrnn as a Python library, and sampling for pipelines (issue 12).

The library is the CLI's engine: the same checkpoint, seed and options give the same text
through `charrnn.load(...).sample(...)` and `charrnn sample`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import run_cli, shakespeare_head, tiny_run
from typer.testing import CliRunner

import charrnn
from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError, CorpusError, OutputError, UsageError
from charrnn.sample import NumpyStepper, TorchStepper, feed_seed

README = Path(__file__).parent.parent / "README.md"
PYTHON_API_DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


def cli(*args: str, input: str | None = None) -> SimpleNamespace:
    """The CLI in-process (typer's runner): the same code as a subprocess, seconds faster.
    Real pipes and signals are tested with `run_cli` below."""
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    tiny_run(shakespeare_head(), str(out), max_steps=20, eval_every=10, dropout=0.1)
    return out


# ------------------------------------------------------------------- load / sample


def test_load_sample_stream_score(run):
    model = charrnn.load(str(run / "best.pt"))
    assert model.config.hidden_size == 32 and len(model.vocab) == model.config.vocab_size
    text = model.sample(seed="ROMEO:", length=50, random_seed=3)
    assert text.startswith("ROMEO:") and len(text) == 56
    assert text == model.sample(seed="ROMEO:", length=50, random_seed=3)
    assert "".join(model.stream(seed="ROMEO:", length=50, random_seed=3)) == text
    nats = model.score(shakespeare_head(3000))
    assert 0 < nats < np.log(len(model.vocab)) + 1  # a real loss, near or below uniform
    with pytest.raises(CorpusError, match="never saw"):
        model.score("ROMEO: 안녕")


def test_the_library_and_the_cli_give_the_same_text(run):
    options = dict(seed="First", length=120, temperature=0.7, top_k=20, random_seed=11)
    text = charrnn.load(str(run / "best.pt")).sample(**options)
    proc = run_cli(
        "sample", "-c", str(run / "best.pt"), "--seed", "First", "-n", "120", "-t", "0.7",
        "--top-k", "20", "--random-seed", "11",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == text + "\n"


def test_an_endless_stream_keeps_going_and_the_library_raises_its_own_errors(run):
    model = charrnn.load(str(run / "best.pt"))
    pieces = model.stream(seed="A", length=0, random_seed=1)
    got = [next(pieces) for _ in range(5001)]
    assert got[0] == "A" and all(len(p) == 1 for p in got[1:])
    with pytest.raises(UsageError):
        model.sample(length=0)
    with pytest.raises(CharRNNError, match="not found"):
        charrnn.load(str(run / "missing.pt"))


def test_train_returns_the_result_and_raises_instead_of_exiting(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare_head(6000))
    result = charrnn.train(
        str(corpus), out=str(tmp_path / "r"), hidden_size=16, num_layers=1, batch_size=4,
        seq_len=16, max_steps=12, eval_every=6, precision="fp32", device="cpu",
    )  # fmt: skip
    assert result.step == 12 and result.stop_reason == "max_steps"
    assert [h["step"] for h in result.history] == [6, 12]
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    assert Path(result.last_path).is_file() and Path(result.best_path).is_file()
    again = charrnn.train(str(corpus), out=str(tmp_path / "r"), resume=True, max_steps=14)
    assert again.step == 14
    with pytest.raises(OutputError, match="already holds a run"):
        charrnn.train(str(corpus), out=str(tmp_path / "r"), max_steps=1)
    with pytest.raises(UsageError, match="hidden_sise"):
        charrnn.train(str(corpus), out=str(tmp_path / "x"), hidden_sise=8)


def test_the_readme_python_examples_run(tmp_path, run, monkeypatch):
    """Every ```python block of the README's "Python API" section and of docs/python-api.md
    runs as written (a block in both runs once)."""
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    readme_blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert readme_blocks, "the README has no Python API examples"
    doc_blocks = re.findall(r"```python\n(.*?)```", PYTHON_API_DOC.read_text(), re.S)
    assert doc_blocks, "docs/python-api.md has no examples"
    blocks = [(b, "README.md") for b in readme_blocks]
    blocks += [(b, "docs/python-api.md") for b in doc_blocks if b not in readme_blocks]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes((run / "best.pt").read_bytes())
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "tinyshakespeare.txt").write_text(shakespeare_head(20000))
    monkeypatch.chdir(tmp_path)
    for block, source in blocks:
        exec(compile(block, source, "exec"), {"__name__": "readme"})


# ---------------------------------------------------------- sampling for pipelines


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_long_seed_fed_in_one_pass_leaves_the_state_of_one_at_a_time(kind, run):
    from test_sample import VOCAB, model_of

    model = model_of(kind)
    rng = np.random.default_rng(0)
    seed_ids = rng.integers(0, len(VOCAB), 700).tolist()
    for stepper_of in (lambda: NumpyStepper(model, 2), lambda: TorchStepper(model, 2, "cpu")):
        slow, fast = stepper_of(), stepper_of()
        a = feed_seed(model, slow, seed_ids, fast=False)
        b = feed_seed(model, fast, seed_ids, fast=True)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        step = np.array([3, 5])
        np.testing.assert_allclose(slow.step(step), fast.step(step), rtol=1e-4, atol=1e-5)


def test_stop_at_ends_each_sample_right_after_its_text(run):
    model = charrnn.load(str(run / "best.pt"))
    config = SampleConfig(length=400, num_samples=3, random_seed=2, stop_at="e ")
    samples = ["", "", ""]
    for index, piece in model.generate(config, "The"):
        samples[index] += piece
    for sample in samples:
        generated = sample[3:]
        assert generated.endswith("e ") and generated.count("e ") == 1, generated


def test_seed_file_from_a_file_and_from_stdin(run, tmp_path):
    prompt = shakespeare_head(2000)
    (tmp_path / "prompt.txt").write_text(prompt)
    args = ["sample", "-c", str(run / "best.pt"), "-n", "30", "--random-seed", "4"]
    from_file = cli(*args, "--seed-file", str(tmp_path / "prompt.txt"))
    from_stdin = cli(*args, "--seed-file", "-", input=prompt)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == from_stdin.stdout
    assert from_file.stdout.startswith(prompt) and len(from_file.stdout) == len(prompt) + 31
    # The state is built from all of it: the same text as --seed with the whole prompt.
    model = charrnn.load(str(run / "best.pt"))
    assert from_file.stdout == model.sample(seed=prompt, length=30, random_seed=4) + "\n"


def test_seed_file_problems_are_error_lines(run, tmp_path):
    ckpt = str(run / "best.pt")
    (tmp_path / "odd.txt").write_text("ROMEO: 안녕")
    proc = cli("sample", "-c", ckpt, "--seed-file", str(tmp_path / "odd.txt"))
    assert proc.returncode == 1 and "'안', '녕'" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("sample", "-c", ckpt, "--seed", "A", "--seed-file", str(tmp_path / "odd.txt"))
    assert proc.returncode == 2 and "choose one" in proc.stderr
    proc = cli("sample", "-c", ckpt, "--seed-file", str(tmp_path / "none.txt"))
    assert proc.returncode == 1 and "none.txt" in proc.stderr and proc.stdout == ""


def test_endless_sample_into_head_ends_at_once(run):
    proc = subprocess.run(
        f'"{sys.executable}" -m charrnn sample -c "{run / "best.pt"}" --length 0 | head -c 20000',
        shell=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and len(proc.stdout) == 20000
    assert proc.stderr == b""


def test_endless_sample_ends_on_ctrl_c_with_130(run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "sample", "-c", str(run / "best.pt"), "--length", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout.read(2000)  # it is streaming
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.stdout.read(65536)
    assert proc.wait(timeout=10) == 130
    assert b"Traceback" not in proc.stderr.read()


def test_length_0_with_several_samples_is_a_usage_error(run):
    proc = cli("sample", "-c", str(run / "best.pt"), "-n", "0", "--num-samples", "2")
    assert proc.returncode == 2 and "--length 0" in proc.stderr


# ---------------------------------------------------------------- the CLI for typer users


def test_help_lists_choices_and_ends_with_examples():
    proc = cli("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "[lstm|rnn|gru]" in text and "[auto|fp32|bf16]" in text and "cuda:N" in text
    for command in ("train", "sample", "eval", "info"):
        tail = cli(command, "--help").stdout.rstrip().splitlines()[-8:]
        assert sum("$ charrnn" in line for line in tail) >= 2, tail


def test_shell_completion_is_installable():
    proc = cli("--help")
    assert "--install-completion" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )  # fmt: skip
    assert proc.returncode == 0 and "complete" in proc.stdout


def test_install_torch_script_names_only_the_cpu_index():
    script = (Path(__file__).parent.parent / "scripts" / "install-torch.sh").read_text()
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    urls = set(re.findall(r"https?://\S+?(?=[\"'\s}]|$)", "\n".join(commands)))
    assert urls == {"https://download.pytorch.org/whl/cpu"}
    assert "--index-url" not in "\n".join(commands)


# ------------------------------------------------------------------- --init-from


def test_transplant_keeps_every_known_character_bit_for_bit(run):
    from charrnn.checkpoint import load_checkpoint
    from charrnn.finetune import transplant, union_vocab
    from charrnn.model import CharRNN
    from charrnn.vocab import Vocab

    ckpt = load_checkpoint(str(run / "best.pt"))
    old = Vocab(ckpt["vocab"])
    new = union_vocab(old, Vocab("{}0123456789é"))  # some sort before old ones, some after
    assert [c for c in old.chars if c not in new] == []
    config = charrnn.load(str(run / "best.pt")).config
    fresh = CharRNN(type(config)(**{**config.to_dict(), "vocab_size": len(new)})).state_dict()
    got = transplant(ckpt["model_state"], old, new, fresh)
    state = ckpt["model_state"]
    # Per character: W_xh's column (one-hot input) or E's row (embedding), W_hy's row, b_y.
    sliced = {"head.weight": 0, "head.bias": 0}
    sliced.update({"embed.weight": 0} if "embed.weight" in state else {"rnn.weight_ih_l0": 1})
    for name, axis in sliced.items():
        for c in old.chars:
            i, j = old.index[c], new.index[c]
            assert torch.equal(got[name].select(axis, j), state[name].select(axis, i))
        for c in "{}0123456789é":
            j = new.index[c]
            assert torch.equal(got[name].select(axis, j), fresh[name].select(axis, j))
    for name in state:
        if name not in sliced:
            assert torch.equal(got[name], state[name])
    # The same model, so the same predictions for text made of the old characters.
    before = charrnn.load(str(run / "best.pt"))
    after = CharRNN(type(config)(**{**config.to_dict(), "vocab_size": len(new)})).eval()
    after.load_state_dict(got)
    text = shakespeare_head(500)
    ids_old = torch.tensor([[old.index[c] for c in text]])
    ids_new = torch.tensor([[new.index[c] for c in text]])
    with torch.no_grad():
        a, _ = before.module(ids_old)
        b, _ = after(ids_new)
    cols = torch.tensor([new.index[c] for c in old.chars])
    torch.testing.assert_close(b[..., cols], a, rtol=0, atol=1e-6)


def test_init_from_on_a_text_with_new_characters(run, tmp_path):
    new_text = "def f(x): return {x: [1, 2, 3]}  # new characters: {}[]0-9_#\n" * 40
    (tmp_path / "code.txt").write_text(new_text)
    out = tmp_path / "ft"
    proc = cli(
        "train", str(tmp_path / "code.txt"), "--out", str(out), "--init-from",
        str(run / "best.pt"), "--max-steps", "4", "--batch-size", "4", "--seq-len", "16",
        "--precision", "fp32", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "new character(s) added" in proc.stderr
    model = charrnn.load(str(out / "best.pt"))
    old = charrnn.load(str(run / "best.pt"))
    assert set(old.vocab.chars) <= set(model.vocab.chars)  # absent characters stay
    assert set(new_text) <= set(model.vocab.chars)
    assert model.config.hidden_size == old.config.hidden_size
    info = cli("info", str(out / "best.pt"))
    assert "started from" in info.stdout and str(run / "best.pt") in info.stdout
    ckpt = model.checkpoint
    assert ckpt["step"] == 4 and ckpt["lineage"][0]["step"] == old.checkpoint["step"]
    assert set(ckpt["lineage"][0]["added_chars"]) == set(new_text) - set(old.vocab.chars)
    # Its text lacks most of the model's characters, yet it resumes: matched by content.
    again = cli(
        "train", str(tmp_path / "code.txt"), "--out", str(out), "--resume", "--max-steps", "6"
    )
    assert again.returncode == 0, again.stderr
    assert charrnn.load(str(out / "last.pt")).checkpoint["step"] == 6


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--resume"], 2, "choose one"),
        (["--hidden-size", "64"], 2, "--hidden-size"),
    ],
    ids=["with-resume", "other-model-option"],
)
def test_init_from_refusals_write_nothing(run, tmp_path, extra, code, needle):
    (tmp_path / "t.txt").write_text(shakespeare_head(3000))
    out = tmp_path / "ft"
    proc = cli(
        "train", str(tmp_path / "t.txt"), "--out", str(out), "--init-from",
        str(run / "best.pt"), *extra,
    )  # fmt: skip
    assert proc.returncode == code and needle in proc.stderr, proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_init_from_a_missing_or_damaged_checkpoint_writes_nothing(tmp_path):
    (tmp_path / "t.txt").write_text(shakespeare_head(3000))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    for ckpt, needle in (("missing.pt", "not found"), ("bad.pt", "cannot be read")):
        out = tmp_path / f"out-{ckpt}"
        proc = cli(
            "train", str(tmp_path / "t.txt"), "--out", str(out), "--init-from",
            str(tmp_path / ckpt),
        )  # fmt: skip
        assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
        assert not out.exists()


def test_transplant_grows_an_embedding_by_rows():
    from charrnn.config import ModelConfig
    from charrnn.finetune import transplant, union_vocab
    from charrnn.model import CharRNN
    from charrnn.vocab import Vocab

    old, text = Vocab("abcdef \n"), Vocab("xyz(a)")
    new = union_vocab(old, text)
    config = ModelConfig(vocab_size=len(old), hidden_size=8, input="embedding", embedding_size=4)
    state = CharRNN(config).state_dict()
    fresh = CharRNN(ModelConfig(**{**config.to_dict(), "vocab_size": len(new)})).state_dict()
    got = transplant(state, old, new, fresh)
    assert got["rnn.weight_ih_l0"].shape == state["rnn.weight_ih_l0"].shape  # D wide: unchanged
    assert torch.equal(got["rnn.weight_ih_l0"], state["rnn.weight_ih_l0"])
    for c in old.chars:
        assert torch.equal(got["embed.weight"][new.index[c]], state["embed.weight"][old.index[c]])
    for c in "xyz()":
        assert torch.equal(got["embed.weight"][new.index[c]], fresh["embed.weight"][new.index[c]])
