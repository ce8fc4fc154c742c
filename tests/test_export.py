"""`charrnn export`: the ONNX step against the model (in a process without torch), the
docs' onnxruntime sampler, the web page in headless Chromium, and the errors."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import run_cli

from charrnn.config import ModelConfig
from charrnn.export import onnx as onnx_export
from charrnn.export import web
from charrnn.model import CharRNN
from charrnn.vocab import Vocab

DOCS = Path(__file__).resolve().parent.parent / "docs" / "elsewhere.md"
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs charrnn[export] (onnx, onnxruntime)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Steps the exported graph from a zero state over each (B, T) id array and saves the
# logits and final states; asserts at the end that torch was never imported.
RUNNER = """
import sys, numpy as np, onnxruntime as ort
for path in sys.argv[1:]:
    s = ort.InferenceSession(path)
    ids = np.load(path + ".ids.npy")  # (B, T)
    state = {i.name: np.zeros([i.shape[0], ids.shape[0], i.shape[2]], np.float32)
             for i in s.get_inputs() if i.name != "ids"}
    logits = []
    for t in range(ids.shape[1]):
        out, *new = s.run(None, {"ids": ids[:, t], **state})
        logits.append(out)
        state = dict(zip(state, new))
    np.save(path + ".logits.npy", np.stack(logits, 1))  # (B, T, V)
    np.save(path + ".h.npy", state["h"])
assert "torch" not in sys.modules
"""

CASES = [  # (model, input, layers): every cell, both inputs, one to three layers
    ("lstm", "onehot", 1),
    ("lstm", "embedding", 3),
    ("gru", "onehot", 2),
    ("gru", "embedding", 1),
    ("rnn", "onehot", 3),
    ("rnn", "embedding", 2),
]


def _random_model(kind: str, input: str, layers: int, vocab: Vocab) -> CharRNN:
    torch.manual_seed(len(kind) + layers)
    config = ModelConfig(
        model=kind, vocab_size=len(vocab), hidden_size=24, num_layers=layers, dropout=0.3,
        input=input, embedding_size=8,
    )  # fmt: skip
    model = CharRNN(config).eval()
    with torch.no_grad():  # larger than at init, so that gates saturate as trained ones do
        for p in model.parameters():
            p.mul_(4.0)
    return model


@needs_onnx
def test_onnx_step_equals_the_model_in_a_process_without_torch(tmp_path):
    vocab = Vocab("abcdefghij \n!")
    ids = np.random.default_rng(0).integers(0, len(vocab), size=(3, 20))  # (B, T)
    paths, expected = [], []
    for case in CASES:
        model = _random_model(*case, vocab)
        path = str(tmp_path / ("_".join(map(str, case)) + ".onnx"))
        onnx_export.write(onnx_export.build(model, vocab, {}), path)
        np.save(path + ".ids.npy", ids)
        with torch.no_grad():
            logits, hidden = model(torch.from_numpy(ids))  # zero state, (B, T, V)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        paths.append(path)
        expected.append((logits.numpy(), h.numpy()))
    done = subprocess.run([sys.executable, "-c", RUNNER, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for case, path, (logits, h) in zip(CASES, paths, expected, strict=True):
        got = np.load(path + ".logits.npy")
        assert np.abs(got - logits).max() < 1e-4, case
        assert np.abs(np.load(path + ".h.npy") - h).max() < 1e-4, case
        assert np.abs(logits).max() > 1.0, case  # the comparison is not of near-zeros


def _snippet() -> str:
    """The sampler in docs/elsewhere.md: the first ```python block."""
    return re.search(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)[1]


@needs_onnx
def test_the_docs_sampler_writes_what_charrnn_sample_does_at_temperature_0(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    model = str(tmp_path / "model.onnx")
    done = run_cli("export", ckpt, "--format", "onnx", "--out", model)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and os.path.getsize(model) > 10000
    import onnx

    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert json.loads(meta["vocab"]) == checkpoint["vocab"]
    assert json.loads(meta["config"])["hidden_size"] == 32
    snippet = tmp_path / "sample.py"
    snippet.write_text(_snippet() + "\nassert 'torch' not in sys.modules\n", encoding="utf-8")
    seed = "ROMEO:\nWhat"
    ours = subprocess.run(
        [sys.executable, str(snippet), model, seed, "120", "0"], capture_output=True, text=True
    )
    assert ours.returncode == 0, ours.stderr
    theirs = run_cli("sample", "-c", ckpt, "--seed", seed, "-n", "120", "-t", "0")
    assert ours.stdout == theirs.stdout and len(ours.stdout) == len(seed) + 121
    warm = subprocess.run(
        [sys.executable, str(snippet), model, seed, "50", "1.0"], capture_output=True, text=True
    )
    assert (
        warm.returncode == 0 and warm.stdout.startswith(seed) and len(warm.stdout) == len(seed) + 51
    )


def test_a_missing_onnx_extra_is_one_error_line_naming_it(trained, tmp_path):
    # onnx set to None in sys.modules: importing it fails as if it were not installed.
    code = (
        "import sys; sys.modules['onnx'] = None; sys.argv = ['charrnn', *sys.argv[1:]]; "
        "from charrnn.cli import main; main()"
    )
    out = str(tmp_path / "m.onnx")
    args = [os.path.join(trained, "best.pt"), "--format", "onnx", "--out", out]
    done = subprocess.run(
        [sys.executable, "-c", code, "export", *args], capture_output=True, text=True
    )
    assert done.returncode == 1 and not os.path.exists(out)
    assert done.stderr.strip().splitlines() == [
        "error: exporting to ONNX needs the onnx package: pip install 'charrnn[export]'"
    ]


def test_bad_export_arguments_are_one_error_line(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for args, code, needle in [
        (["--format", "pdf", "--out", str(tmp_path / "x")], 2, "unknown --format 'pdf'"),
        (["--format", "web", "--out", str(a_file)], 1, "is a file; the web export writes a folder"),
        (["--format", "onnx", "--out", str(tmp_path)], 1, "is a folder; the ONNX export writes"),
    ]:
        done = run_cli("export", ckpt, *args)
        assert done.returncode == code and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert needle in done.stderr, done.stderr
    done = run_cli("export", str(tmp_path / "nope.pt"), "--format", "web", "--out", "x")
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_web_export_holds_the_weights_and_nothing_from_the_network(trained, tmp_path):
    site = tmp_path / "site"
    done = run_cli(
        "export", os.path.join(trained, "best.pt"), "--format", "web", "--out", str(site)
    )
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(site)) == ["charrnn.js", "index.html", "model.js", "page.js"]
    text = (site / "model.js").read_text(encoding="ascii")
    body = json.loads(text.removeprefix("window.CHARRNN_MODEL = ").rstrip().removesuffix(";"))
    checkpoint = torch.load(os.path.join(trained, "best.pt"), map_location="cpu", weights_only=True)
    weights = np.frombuffer(__import__("base64").b64decode(body["weights"]), "<f4")
    assert weights.size == sum(v.numel() for v in checkpoint["model_state"].values())
    assert body["vocab"] == checkpoint["vocab"] and body["format"] == web.FORMAT
    offset, shape = body["tensors"]["head_weight"]
    head = checkpoint["model_state"]["head.weight"].numpy()
    assert np.array_equal(weights[offset : offset + head.size].reshape(shape), head)
    for name in os.listdir(site):  # no address anywhere: nothing can be fetched from elsewhere
        assert not re.search(r"https?:|//cdn|import\(", (site / name).read_text()), name


class _Quiet(SimpleHTTPRequestHandler):
    requested: ClassVar[list[str]] = []

    def log_message(self, format, *args):
        self.requested.append(self.path.split("?")[0])


def _dump(url: str) -> str:
    """The page's DOM once its timers have run (virtual time runs them as fast as it can)."""
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=120000",
        ]  # fmt: skip
        done = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        )
    return done.stdout


def _output(dom: str) -> tuple[str, str]:
    """(the attributes, the text) of the element with id output."""
    match = re.search(r'<pre id="output"([^>]*)>(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    return match[1], html.unescape(match[2])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_web_page_generates_what_charrnn_sample_does_in_headless_chromium(trained, tmp_path):
    ckpt = os.path.join(trained, "best.pt")
    site = tmp_path / "site"
    assert run_cli("export", ckpt, "--format", "web", "--out", str(site)).returncode == 0
    _Quiet.requested = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/index.html?"
    seed = "MENENIUS:\nWhat say'st thou? "
    try:
        query = urllib.parse.urlencode({"seed": seed, "length": 150, "temperature": 0})
        attrs, text = _output(_dump(base + query))
        query = urllib.parse.urlencode(
            {"seed": seed, "length": 80, "temperature": 0.9, "random_seed": 3}
        )
        warm_attrs, warm = _output(_dump(base + query))
        query = urllib.parse.urlencode({"seed": "KING\u2603", "length": 10})
        bad_attrs, bad = _output(_dump(base + query))
    finally:
        server.shutdown()
        server.server_close()
    theirs = run_cli("sample", "-c", ckpt, "--seed", seed, "-n", "150", "-t", "0")
    assert 'data-done="yes"' in attrs and text + "\n" == theirs.stdout
    assert 'data-done="yes"' in warm_attrs and warm.startswith(seed) and len(warm) == len(seed) + 80
    assert 'data-error="seed"' in bad_attrs and bad == ""
    assert set(_Quiet.requested) == {"/index.html", "/model.js", "/charrnn.js", "/page.js"}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_the_web_runtime_steps_every_cell_as_the_model_does(tmp_path):
    # Each model's logits over a sequence of ids, from a zero state, computed by charrnn.js in
    # the browser, against the model's own (random weights made large, so gates saturate).
    vocab = Vocab("abcdefghij \n!")
    ids = np.random.default_rng(1).integers(0, len(vocab), size=25)
    page = ['<!doctype html><meta charset="utf-8"><script src="charrnn.js"></script>']
    page.append("<script>const found = [];</script>")
    expected = []
    for n, case in enumerate(CASES):
        model = _random_model(*case, vocab)
        script = web.model_script(model, vocab, "a", "test")
        (tmp_path / f"m{n}.js").write_text(script, encoding="ascii")
        page.append(f'<script src="m{n}.js"></script><script>found.push(CHARRNN_MODEL)</script>')
        with torch.no_grad():
            expected.append(model(torch.from_numpy(ids)[None])[0][0].numpy())  # (T, V)
    page.append(
        f'<pre id="result"></pre><script>const ids = {json.dumps(ids.tolist())};'
        "document.getElementById('result').textContent = JSON.stringify(found.map((m) => {"
        "const s = new CharRNN.Stepper(m); return ids.map((id) => Array.from(s.step(id)));"
        "}));</script>"
    )
    shutil.copy(Path(web.__file__).parent / "static" / "charrnn.js", tmp_path)
    (tmp_path / "steps.html").write_text("\n".join(page), encoding="utf-8")
    dom = _dump((tmp_path / "steps.html").as_uri())
    got = json.loads(html.unescape(re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)[1]))
    for case, logits, want in zip(CASES, got, expected, strict=True):
        assert np.abs(np.array(logits) - want).max() < 1e-4, case
        assert np.abs(want).max() > 1.0, case
