"""Large vocabularies (Korean, Chinese, Japanese, random Unicode): the input kinds, the
checkpoints written before them, bounded evaluation memory, `info`, and runs too big for
the machine refused before they allocate."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PATTERN, run_cli, shakespeare_head, tiny_run
from typer.testing import CliRunner

import charrnn.training.evaluation
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, SampleConfig, TrainConfig
from charrnn.errors import ResourceError
from charrnn.memory import check_memory, estimate
from charrnn.model import CharRNN
from charrnn.sample import generate
from charrnn.training import StepDone, StopRequest, eval_chunk_len, evaluate

DATA = Path(__file__).parent / "data"
# Written by charrnn before --input existed (main at c03c820): `charrnn train` on the first
# 3,000 characters of Tiny Shakespeare, --hidden-size 8 --batch-size 4 --seq-len 16
# --max-steps 4 --eval-every 2. Its model_config has no "input" key.
OLD_CHECKPOINT = DATA / "checkpoint_before_input_option.pt"
TINY = ["--hidden-size", "8", "--num-layers", "1", "--batch-size", "2", "--seq-len", "8"]
TINY += ["--precision", "fp32", "--device", "cpu"]

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def random_unicode(num_distinct: int, length: int, seed: int = 0) -> str:
    """Text of `num_distinct` distinct code points from planes 2-3 (CJK extensions and
    unassigned: valid UTF-8 all the same), each at least once, in random order."""
    rng = random.Random(seed)
    points = [chr(0x20000 + i) for i in range(num_distinct)]
    chars = points + [rng.choice(points) for _ in range(length - num_distinct)]
    rng.shuffle(chars)
    return "".join(chars)


# ------------------------------------------------------------------- input kinds


def test_auto_input_is_the_embedding_and_the_checkpoint_stores_the_decision():
    for v in (2, 65, 170, 6000):
        assert ModelConfig(vocab_size=v).input == "embedding"
        assert ModelConfig(vocab_size=v, input="onehot").input == "onehot"  # asked: kept
    # The checkpoint stores the decision, so a later default cannot change a saved model:
    # a one-hot checkpoint stays one-hot whatever `auto` now means.
    assert ModelConfig(vocab_size=65).to_dict()["input"] == "embedding"
    saved = ModelConfig(vocab_size=65, input="onehot").to_dict()
    assert ModelConfig.from_dict(saved).input == "onehot"


def test_a_config_without_an_input_key_is_one_hot_whatever_its_vocabulary():
    old = {"model": "lstm", "vocab_size": 6000, "hidden_size": 8, "num_layers": 1}
    assert ModelConfig.from_dict(old).input == "onehot"


def test_an_embedding_model_learns_and_reproduces_a_pattern(tmp_path):
    result, _ = tiny_run(PATTERN * 60, str(tmp_path), input="embedding", max_steps=150,
                         eval_every=50, lr=2e-2)  # fmt: skip
    assert result.last_val_loss < 0.05
    ckpt = load_checkpoint(str(tmp_path / "last.pt"))
    assert ckpt["model_config"]["input"] == "embedding"
    assert ckpt["model_state"]["embed.weight"].shape == (len(set(PATTERN)), 16)
    model, vocab = model_from_checkpoint(ckpt)
    out = "".join(t for _, t in generate(model, vocab, "h", SampleConfig(length=40, temperature=0)))
    assert out == (PATTERN * 4)[:41]


def test_a_resumed_embedding_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    text = shakespeare_head(3000)
    opts = {"input": "embedding", "dropout": 0.3, "max_steps": 12, "eval_every": 5}
    full, _ = tiny_run(text, str(tmp_path / "full"), **opts)
    stop = StopRequest()

    def interrupt(event):
        if isinstance(event, StepDone) and event.step == 7:
            stop.set("SIGINT")

    tiny_run(text, str(tmp_path / "part"), stop=stop, on_event=interrupt, **opts)
    resumed, _ = tiny_run(
        text, str(tmp_path / "part"), resume=load_checkpoint(str(tmp_path / "part/last.pt"))
    )
    a = load_checkpoint(str(tmp_path / "full/last.pt"))["model_state"]
    b = load_checkpoint(str(tmp_path / "part/last.pt"))["model_state"]
    assert resumed.step == full.step == 12 and "embed.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- checkpoints written before --input


def test_a_checkpoint_from_before_the_input_option_loads_samples_evaluates_and_resumes(
    tmp_path,
):
    ckpt = load_checkpoint(str(OLD_CHECKPOINT))
    assert "input" not in ckpt["model_config"]
    model, _ = model_from_checkpoint(ckpt)
    assert model.config.input == "onehot" and model.embed is None

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_head(3000), encoding="utf-8")
    info = invoke("info", OLD_CHECKPOINT)
    assert info.exit_code == 0 and "one-hot x_t" in info.stdout
    sample = invoke("sample", "-c", OLD_CHECKPOINT, "-n", "30", "--random-seed", "1")
    assert sample.exit_code == 0 and len(sample.stdout) == 1 + 30 + 1  # seed, text, newline
    scored = invoke("eval", "-c", OLD_CHECKPOINT, corpus, "--json")
    assert scored.exit_code == 0 and 0 < json.loads(scored.stdout)["loss_nats"] < 10

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(OLD_CHECKPOINT, out / "last.pt")
    resumed = invoke("train", corpus, "--out", out, "--resume", "--max-steps", "6", "-q")
    assert resumed.exit_code == 0, resumed.output
    after = load_checkpoint(str(out / "last.pt"))
    assert after["step"] == 6 and after["model_config"]["input"] == "onehot"


# ------------------------------------------------------------- evaluation memory


def test_evaluation_of_a_large_vocabulary_keeps_its_logits_under_the_bound(monkeypatch):
    vocab_size, streams = 500, 4
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=vocab_size, hidden_size=8, num_layers=1)).eval()
    ids = torch.randint(0, vocab_size, (4 * 300 + 3,), dtype=torch.int16)
    whole = evaluate(model, ids, torch.device("cpu"), num_streams=streams)  # chunks of 300

    bound = 4 * streams * vocab_size * 8  # room for 8-character chunks
    monkeypatch.setattr(charrnn.training.evaluation, "EVAL_LOGITS_BYTES", bound)
    sizes = []
    model.head.register_forward_hook(lambda m, i, out: sizes.append(out.numel() * 4))
    chunked = evaluate(model, ids, torch.device("cpu"), num_streams=streams)
    assert len(sizes) > 300 // 8 and max(sizes) <= bound
    assert chunked == pytest.approx(whole, rel=1e-6)  # the state carries across chunks


def test_validation_chunks_shrink_with_the_vocabulary():
    assert eval_chunk_len(64, 65) == 1024  # Tiny Shakespeare: as before
    assert 4 * 64 * eval_chunk_len(64, 6000) * 6000 <= charrnn.training.evaluation.EVAL_LOGITS_BYTES
    assert eval_chunk_len(1, 2_000_000) == 8  # never zero


# ---------------------------------------------------------------------------- info


def test_info_of_a_6000_character_vocabulary_is_a_count_and_a_sample(tmp_path):
    rng = random.Random(1)
    hangul = [chr(0xAC00 + i) for i in range(6000)]
    text = "".join(hangul) + "".join(rng.choice(hangul) + " " for _ in range(3000))
    corpus = tmp_path / "hangul.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    trained = invoke("train", corpus, "--out", out, *TINY, "--max-steps", "2", "-q")
    assert trained.exit_code == 0, trained.output
    shown = invoke("info", out / "last.pt")
    assert shown.exit_code == 0
    line = next(x for x in shown.stdout.splitlines() if x.startswith("vocabulary"))
    assert "6,001 characters (Hangul 6,000, spaces 1)" in line and len(line) < 200
    assert "learned embedding E (128 x 6,001): W_xh = W_ih E" in shown.stdout
    full = json.loads(invoke("info", out / "last.pt", "--json").stdout)
    assert full["vocab"] == " " + "".join(hangul) and full["model"]["input"] == "embedding"


# ------------------------------------------------------------ absurd vocabularies


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory):
    """A run trained on 100,000 distinct code points (2,000 repeats) with a tiny model."""
    tmp = tmp_path_factory.mktemp("unicode")
    corpus = tmp / "unicode.txt"
    corpus.write_text(random_unicode(100_000, 102_000), encoding="utf-8")
    out = tmp / "run"
    # A small validation part: scoring each character costs V = 100,000 logits.
    trained = invoke("train", corpus, "--out", out, *TINY, "--max-steps", "2",
                     "--val-fraction", "0.005", "-q")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    return corpus, out


def test_a_corpus_of_100k_distinct_code_points_trains_with_small_options(unicode_run):
    _, out = unicode_run
    ckpt = load_checkpoint(str(out / "last.pt"))
    assert len(ckpt["vocab"]) == 100_000 and ckpt["model_config"]["input"] == "embedding"
    assert ckpt["step"] == 2 and ckpt["best_val_loss"] > 0


def test_a_run_too_big_for_memory_is_refused_before_it_allocates(unicode_run):
    corpus, out = unicode_run
    before = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    # (256, 256, 100,000) logits: about 200 GB, more than any machine this runs on.
    big = ["--batch-size", "256", "--seq-len", "256", "--val-fraction", "0.05"]
    proc = run_cli("train", str(corpus), "--out", str(out), "--force", *big, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: training would need about")
    assert "logits" in lines[0] and "lower --batch-size or --seq-len" in lines[0]
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == before


def test_the_memory_check_compares_the_estimate_with_what_is_free(monkeypatch):
    model, train = ModelConfig(vocab_size=6000), TrainConfig()
    need = estimate(model, train).total
    monkeypatch.setattr("charrnn.memory.available_bytes", lambda device: 2 * need)
    check_memory(model, train, torch.device("cpu"))  # fits: no error
    monkeypatch.setattr("charrnn.memory.available_bytes", lambda device: need)
    with pytest.raises(ResourceError, match="training would need about"):
        check_memory(model, train, torch.device("cpu"))
    # The estimate grows with what grows the run.
    assert estimate(ModelConfig(vocab_size=60_000), train).total > need
    assert estimate(model, TrainConfig(batch_size=48)).total > need
    assert estimate(ModelConfig(vocab_size=6000, input="onehot"), train).total > need


@pytest.mark.parametrize(
    "options, needle",
    [
        (["--input", "bytes"], "unknown --input 'bytes'"),
        (["--embedding-size", "0"], "--embedding-size"),
    ],
)
def test_bad_input_option_is_a_usage_error(tmp_path, options, needle):
    corpus = tmp_path / "c.txt"
    corpus.write_text(PATTERN * 20, encoding="utf-8")
    result = invoke("train", corpus, "--out", tmp_path / "run", *TINY, *options)
    assert result.exit_code == 2 and needle in result.output
    assert not (tmp_path / "run").exists()  # refused before touching the disk
