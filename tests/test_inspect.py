"""The commands that look inside a model: neurons, gradients, novelty, plot.

Each runs as a user runs it, in a subprocess, on tiny models; the numbers behind them are
checked in-process against an independent computation (torch's own modules).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SHAKESPEARE, run_cli, shakespeare_head, tiny_run
from rich.console import Console
from typer.testing import CliRunner

import charrnn.cli.inspect
from charrnn.checkpoint import load_checkpoint, model_from_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig
from charrnn.inspect import gradients, neurons, page
from charrnn.model import CharRNN

runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> SimpleNamespace:
    """The command in this process (faster than a subprocess; for the checks that do not
    need a real pipe), with run_cli's result fields."""
    result = runner.invoke(app, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def quote_corpus(num_words: int = 3000, seed: int = 0) -> str:
    """Lowercase words outside double quotes, uppercase inside: the case of every letter
    depends on whether a quote is open, which only a unit that remembers it can know."""
    rng = random.Random(seed)
    words, inside = [], False
    for _ in range(num_words):
        word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 5)))
        if not inside and rng.random() < 0.15:
            word, inside = '"' + word.upper(), True
            if rng.random() < 0.3:
                word, inside = word + '"', False
        elif inside:
            word = word.upper()
            if rng.random() < 0.3:
                word, inside = word + '"', False
        words.append(word)
    return " ".join(words) + "\n"


@pytest.fixture(scope="module")
def quote_model(tmp_path_factory):
    """A small one-layer LSTM trained 300 steps on the quote corpus (a few seconds)."""
    out = tmp_path_factory.mktemp("quotes")
    text = quote_corpus()
    tiny_run(
        text, str(out), max_steps=300, eval_every=300, hidden_size=16, num_layers=1,
        seq_len=32, batch_size=8, lr=2e-2, sample_length=0,
    )  # fmt: skip
    sample = out / "text.txt"
    sample.write_text(text[:4000])
    return out / "last.pt", sample


@pytest.fixture(scope="module")
def quote_report(quote_model, tmp_path_factory):
    """`charrnn neurons --json --html` on the quote model, run once: (report, page)."""
    ckpt, text = quote_model
    html = tmp_path_factory.mktemp("page") / "page.html"
    r = run_cli("neurons", str(ckpt), str(text), "--json", "--top", "3", "--html", str(html))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"wrote {html}"
    return json.loads(r.stdout), html


# ------------------------------------------------------------------------ neurons


def test_neurons_finds_the_quote_unit(quote_model, quote_report):
    ckpt, text = quote_model
    report, _ = quote_report
    best = report["features"]["in_quotes"]
    assert len(best) == 3 and abs(best[0]["corr"]) > 0.8, best
    assert [abs(b["corr"]) for b in best] == sorted((abs(b["corr"]) for b in best), reverse=True)
    assert set(best[0]) == {"layer", "state", "unit", "corr"} and best[0]["layer"] == 0
    assert report["recorded_chars"] == 4000
    # The unit the command names does follow the quotes: colour the text by it (in a pipe,
    # one value per character) and compare the values inside quotes with those outside.
    spec = f"0:{best[0]['state']}:{best[0]['unit']}"
    r = run_cli("neurons", str(ckpt), str(text), "--unit", spec)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()[1:]]
    values = np.array([float(v) for _, _, v in rows])
    inside = neurons.text_features(text.read_text())["in_quotes"] > 0
    gap = values[inside].mean() - values[~inside].mean()
    assert np.sign(gap) == np.sign(best[0]["corr"]) and abs(gap) > 0.3


def test_text_features_by_hand():
    f = neurons.text_features('ab "c" (d\n[e])x')
    #                          a  b  ␣  "  c  "  ␣  (  d  \n [  e  ]  )  x
    assert f["in_quotes"].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert f["in_parens"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert f["line_position"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5]
    assert f["in_word"].tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]


def _inputs(model: CharRNN, ids: torch.Tensor) -> torch.Tensor:
    """What the first layer reads for ids (T,): one-hot x_t, or E x_t. (1, T, V or D)"""
    if model.embed is not None:
        return model.embed(ids)[None]
    return torch.nn.functional.one_hot(ids, model.config.vocab_size).float()[None]


@pytest.mark.parametrize("input", ["onehot", "embedding"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_recorded_states_are_the_models_own(kind, input):
    torch.manual_seed(0)
    config = ModelConfig(
        model=kind, vocab_size=7, hidden_size=8, num_layers=2, dropout=0.0, input=input
    )
    model = CharRNN(config).eval()
    ids = torch.randint(0, 7, (neurons.CHUNK + 300,))  # crosses a chunk boundary
    rec = neurons.record(model, ids, "x" * len(ids))
    with torch.no_grad():
        out, _ = model.rnn(_inputs(model, ids))  # (1, T, H)
    top = rec.states[(1, "h")].astype(np.float32)
    assert np.abs(top - out[0].numpy()).max() < 2e-3  # float16 storage
    if kind == "lstm":
        h, c, o = (rec.states[(0, s)].astype(np.float32) for s in ("h", "c", "o"))
        assert np.abs(h - o * np.tanh(c)).max() < 3e-3  # h_t = o_t ⊙ tanh(c_t)


def test_long_text_is_cut_at_the_memory_cap_with_a_notice(trained):
    ckpt = os.path.join(trained, "best.pt")
    text = shakespeare_head(20000)
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    cap_mb = 0.5
    expected = neurons.max_chars(model, cap_mb)
    assert expected < len(text)
    r = run_cli("neurons", ckpt, "-", "--json", "--memory-mb", str(cap_mb), input=text)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["recorded_chars"] == expected
    assert "warning:" in r.stderr and f"recording the first {expected:,}" in r.stderr


def test_html_page_is_self_contained(quote_model, quote_report):
    _, text = quote_model
    _, html = quote_report
    doc = html.read_text()
    assert page.PLACEHOLDER not in doc
    # Nothing that could make a request: no src/href to a URL, no CSS url() or @import.
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", doc)
    assert "url(" not in doc and "@import" not in doc
    blob = re.search(r'<script id="charrnn-data" type="application/json">(.*?)</script>', doc, re.S)
    data = json.loads(blob.group(1))
    assert data["text"] == text.read_text()[: page.PAGE_CHARS]
    assert {(b["layer"], b["state"]) for b in data["blocks"]} == {(0, "h"), (0, "c")}
    gates = data["saturation"][0]
    assert set(gates) == {"i", "f", "o"} and len(gates["f"]["left"]) == 16
    assert all(0 <= x <= 1 for g in gates.values() for x in g["left"] + g["right"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_html_page_renders_in_a_headless_browser(quote_report, tmp_path):
    report, html = quote_report
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    url = html.as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90
    ).stdout
    # The script ran to its end, picked the best in_quotes unit and coloured every character.
    assert 'data-ready="yes"' in dom
    first = report["features"]["in_quotes"][0]
    assert f'data-unit="0:{first["state"]}:{first["unit"]}"' in dom
    assert dom.count("background-color: rgb") == page.PAGE_CHARS  # rgba(), or rgb() when opaque
    assert dom.count("<circle") == 3 * 16  # a point per gate unit: i, f, o × 16
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1400", url],
        capture_output=True, timeout=90,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10000
    if os.environ.get("CHARRNN_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["CHARRNN_KEEP_SCREENSHOT"])


def test_neurons_bad_input_is_one_error_line(quote_model, tmp_path):
    ckpt, text = quote_model
    for args, code, needle in [
        (["--unit", "0:q:1"], 2, "--unit state 'q'"),
        (["--unit", "3:h:1"], 2, "--unit layer 3 does not exist"),
        (["--unit", "0:h:99"], 2, "--unit index 99 is out of range"),
        (["--unit", "zero"], 2, "is not LAYER:STATE:INDEX"),
        (["--unit", "0:h:1", "--json"], 2, "choose one"),
    ]:
        result = runner.invoke(app, ["neurons", str(ckpt), str(text), *args])
        assert result.exit_code == code, result.output
        assert result.stdout == "" and needle in result.stderr, result.stderr
    strange = tmp_path / "strange.txt"
    strange.write_text("ß€")
    result = runner.invoke(app, ["neurons", str(ckpt), str(strange)])
    assert result.exit_code == 2 and "never saw" in result.stderr


# ---------------------------------------------------------------------- gradients


def _reference_norms(model: CharRNN, window: torch.Tensor, target: int, k: int):
    """(||dL/dh_{t-k}||, ||dL/dc_{t-k}|| or None) through torch's own nn module: run it to
    t-k, then on from a state that requires grad, to the loss at t."""
    with torch.no_grad():
        x = _inputs(model, window)  # (1, W, V or D)
        _, state = model.rnn(x[:, : len(window) - k])
    lstm = isinstance(state, tuple)
    h0 = (state[0] if lstm else state).clone().requires_grad_(True)
    c0 = state[1].clone().requires_grad_(True) if lstm else None
    start = (h0, c0) if lstm else h0
    if k == 0:
        top = h0[-1]  # (1, H)
    else:
        out, _ = model.rnn(x[:, len(window) - k :], start)
        top = out[:, -1]
    loss = torch.nn.functional.cross_entropy(model.head(top), torch.tensor([target]))
    grads = torch.autograd.grad(loss, [h0, c0] if lstm else [h0], allow_unused=True)
    norms = [0.0 if g is None else float(g.norm()) for g in grads]
    return norms[0], (norms[1] if lstm else None)


@pytest.mark.parametrize("input", ["onehot", "embedding"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_gradient_norms_match_torchs_own_backward(kind, input):
    torch.manual_seed(1)
    config = ModelConfig(model=kind, vocab_size=6, hidden_size=10, num_layers=2, input=input)
    model = CharRNN(config).eval()
    windows = torch.randint(0, 6, (3, 30))
    targets = torch.randint(0, 6, (3,))
    norms = gradients.gradient_norms(model, windows, targets, max_distance=12)
    total = np.sqrt((norms["h"] ** 2).sum(axis=2))  # (B, K+1)
    assert ("c" in norms) == (kind == "lstm")
    for b in range(3):
        for k in (0, 1, 5, 12):
            h_norm, c_norm = _reference_norms(model, windows[b], int(targets[b]), k)
            assert total[b, k] == pytest.approx(h_norm, rel=1e-4)
            if kind == "lstm":
                cell = np.sqrt((norms["c"][b, k] ** 2).sum())
                assert cell == pytest.approx(c_norm, rel=1e-4, abs=1e-9)


def test_a_contracting_rnn_forgets_within_a_few_steps():
    # With small recurrent weights every step's Jacobian shrinks the gradient: it vanishes.
    torch.manual_seed(0)
    config = ModelConfig(model="rnn", vocab_size=5, hidden_size=16, num_layers=1, input="onehot")
    model = CharRNN(config)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.2)
    ids = torch.randint(0, 5, (400,))
    result = gradients.gradient_reach(model, ids, max_distance=20, num_positions=8)
    norms = result["norms"]
    assert result["distances"] == list(range(21)) and result["positions"] == 8
    assert all(a > b for a, b in itertools.pairwise(norms))
    assert norms[20] < 1e-6 * norms[0]


def test_gradients_command(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    text = tmp_path / "t.txt"
    text.write_text(shakespeare_head(3000))
    r = invoke("gradients", ckpt, str(text), "--max-distance", "30", "--positions", "4", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["distances"] == list(range(31)) and len(result["norms"]) == 31
    assert len(result["norms_by_layer"]) == 2 and all(v > 0 for v in result["norms"])
    r = run_cli("gradients", ckpt, str(text), "--max-distance", "30", "--positions", "4")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^│\s*30 │\s*\d\.\d{3}e[-+]\d\d │", r.stdout, re.M)  # the row for k=30
    assert "gradient norm against distance k" in r.stdout  # the plot
    short = tmp_path / "short.txt"
    short.write_text("First")
    r = invoke("gradients", ckpt, str(short))
    assert r.returncode == 2 and "error: the text has 5 characters" in r.stderr


# ------------------------------------------------------------------------ novelty


def test_novelty_of_a_slice_of_the_corpus_is_all_copied():
    with open(SHAKESPEARE, encoding="utf-8") as f:
        piece = f.read()[50000:52000]
    r = run_cli("novelty", "--corpus", SHAKESPEARE, "-", "--json", input=piece)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["ngrams"] == {"5": 1.0, "10": 1.0, "20": 1.0, "40": 1.0}
    assert result["longest_copied"] == {"length": 2000, "text": piece}
    r = invoke("novelty", "--corpus", SHAKESPEARE, input=piece)
    assert "longest copied substring: 2000 characters: " in r.stdout
    assert "… (1,700 more; --json prints it whole)" in r.stdout


def test_novelty_of_text_the_corpus_never_holds_is_nothing_at_20(tmp_path):
    rng = random.Random(3)
    text = "".join(rng.choice("qxzjvk0123456789") for _ in range(1000))
    sample = tmp_path / "new.txt"
    sample.write_text(text)
    r = invoke("novelty", "--corpus", SHAKESPEARE, str(sample), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["ngrams"]["20"] == 0.0 and result["ngrams"]["40"] == 0.0
    assert result["longest_copied"]["length"] < 10


def test_novelty_counts_characters_not_bytes(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("über café naïve déjà vu " * 3)
    sample = tmp_path / "s.txt"
    sample.write_text("xx café naïve zz")
    r = invoke("novelty", "--corpus", str(corpus), str(sample), "--json")
    result = json.loads(r.stdout)
    assert result["longest_copied"] == {"length": 12, "text": " café naïve "}
    # 16 characters: 12 five-grams; those inside " café naïve " (12 chars) are 8.
    assert result["ngrams"]["5"] == pytest.approx(8 / 12)
    assert result["ngrams"]["20"] is None  # shorter than 20: no 20-grams at all
    r = invoke("novelty", "--corpus", str(corpus), str(sample))
    assert "longest copied substring: 12 characters" in r.stdout


# --------------------------------------------------------------------------- plot


def test_plot_draws_several_runs_in_the_terminal_and_to_files(tmp_path):
    for name, steps in (("a", 20), ("b", 10)):
        tiny_run(
            shakespeare_head(3000), str(tmp_path / name), max_steps=steps, eval_every=5,
            hidden_size=8, num_layers=1, sample_length=10,
        )  # fmt: skip
    a, b = str(tmp_path / "a"), str(tmp_path / "b" / "metrics.jsonl")
    r = run_cli("plot", a, b)
    assert r.returncode == 0, r.stderr
    assert "a val" in r.stdout and "a train" in r.stdout and "b val" in r.stdout
    assert re.search(r"^a: 4 evaluations to step 20; last val \d\.\d{4} nats/char", r.stdout, re.M)
    assert "\x1b[" not in r.stdout  # no colour codes in a pipe
    for ext, magic, how in ((".png", b"\x89PNG", run_cli), (".svg", b"<?xml", invoke)):
        image = tmp_path / f"loss{ext}"
        r = how("plot", a, b, "--out", str(image))
        assert r.returncode == 0, r.stderr
        assert image.read_bytes().startswith(magic)
    r = invoke("plot", a, "--out", str(tmp_path / "loss.jpg"))
    assert r.returncode == 2 and "error: --out" in r.stderr and ".png or .svg" in r.stderr
    (tmp_path / "nothing").mkdir()  # a folder, but not a run (a missing path: test_hardening3)
    r = invoke("plot", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "has no metrics.jsonl" in r.stderr


def test_plot_without_the_extra_names_it(tmp_path, monkeypatch):
    tiny_run(shakespeare_head(3000), str(tmp_path / "a"), max_steps=5, eval_every=5, hidden_size=8)
    monkeypatch.setitem(sys.modules, "plotext", None)  # import plotext now fails
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["plot", str(tmp_path / "a")])
    assert result.exit_code == 1 and "pip install 'charrnn[plot]'" in result.stderr
    result = runner.invoke(app, ["plot", str(tmp_path / "a"), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "needs matplotlib" in result.stderr
    monkeypatch.setitem(sys.modules, "pydivsufsort", None)
    result = runner.invoke(app, ["novelty", "--corpus", SHAKESPEARE, "-"], input="hello")
    assert result.exit_code == 1 and "pip install 'charrnn[novelty]'" in result.stderr


def test_unit_colours_each_character_on_a_truecolor_terminal(
    quote_model, quote_report, monkeypatch
):
    ckpt, text = quote_model
    report, _ = quote_report
    best = report["features"]["in_quotes"][0]
    screen = io.StringIO()
    term = Console(file=screen, force_terminal=True, color_system="truecolor", width=100)
    monkeypatch.setattr(charrnn.cli.inspect, "out", term)
    # stderr a terminal too: the progress bar is drawn there while the units are recorded.
    progress = io.StringIO()
    err_term = Console(file=progress, force_terminal=True, width=100)
    monkeypatch.setattr(charrnn.cli.inspect, "err", err_term)
    spec = f"0:{best['state']}:{best['unit']}"
    result = runner.invoke(app, ["neurons", str(ckpt), str(text), "--unit", spec])
    assert result.exit_code == 0, result.output
    backgrounds = re.findall(r"\x1b\[[0-9;]*48;2;(\d+);(\d+);(\d+)", screen.getvalue())
    assert len(backgrounds) >= 1000  # a 24-bit background per character (runs may merge)
    # Both signs appear: red-ish (r > b) for one quote state, blue-ish for the other.
    reds = sum(int(r) > int(b) for r, _, b in backgrounds)
    blues = sum(int(b) > int(r) for r, _, b in backgrounds)
    assert reds > 100 and blues > 100
    assert "recording units" in progress.getvalue() and "4000/4000" in progress.getvalue()


def test_novelty_index_is_built_once_reused_and_rebuilt_for_another_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(shakespeare_head(20000))
    index = tmp_path / "c.sa.npy"
    piece = shakespeare_head(20000)[5000:5400] + " qqxxzz"
    first = invoke("novelty", "--corpus", corpus, "--index", index, "--json", input=piece)
    assert first.returncode == 0 and f"saved the index of {corpus} to {index}" in first.stderr
    stamp = index.stat().st_mtime_ns
    again = invoke("novelty", "--corpus", corpus, "--index", index, "--json", input=piece)
    assert again.stdout == first.stdout and again.stderr == ""  # loaded, not rebuilt
    assert index.stat().st_mtime_ns == stamp
    corpus.write_text(shakespeare_head(20000).replace("e", "E"))  # another text, same length
    other = invoke("novelty", "--corpus", corpus, "--index", index, "--json", input=piece)
    assert "saved the index" in other.stderr  # the stale index was not trusted
    assert json.loads(other.stdout)["ngrams"]["20"] < json.loads(first.stdout)["ngrams"]["20"]
    # A file that is not an index is never overwritten.
    r = invoke("novelty", "--corpus", corpus, "--index", corpus, input=piece)
    assert r.returncode == 1 and "is not a charrnn novelty index" in r.stderr
    assert corpus.read_text() == shakespeare_head(20000).replace("e", "E")
