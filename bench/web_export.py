"""What `charrnn export --format web` costs: the export's size and the page's characters/s
in headless Chromium, beside onnxruntime-web (the npm package) running the ONNX export.

    python bench/web_export.py                 # 2x256 and 3x512 LSTMs (about two minutes)
    python bench/web_export.py --rounds 5 --chars 4000

For each model size, a checkpoint is made by `charrnn train --max-steps 1` on Tiny
Shakespeare (speed does not depend on what the weights are), exported both ways, and each
runtime generates --chars characters at temperature 1 in a page served from 127.0.0.1,
after a 200-character warm-up; the clock is the page's own performance.now(), read back
through Chromium's DevTools list of pages (the page puts its result in its title). Rounds
alternate the two runtimes; figures are medians. onnxruntime-web's files come from
`npm pack onnxruntime-web` (skipped without npm); only the files its WebAssembly build needs
are counted: ort.wasm.min.js, ort-wasm-simd-threaded.mjs and ort-wasm-simd-threaded.wasm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
CHARRNN = [sys.executable, "-m", "charrnn"]
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
SIZES = {"2x256": ["--hidden-size", "256", "--num-layers", "2"],
         "3x512": ["--hidden-size", "512", "--num-layers", "3"]}  # fmt: skip

HAND_PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">
<script src="model.js"></script><script src="charrnn.js"></script><script>
const q = new URLSearchParams(location.search), n = Number(q.get("n"));
const s = new CharRNN.Stepper(window.CHARRNN_MODEL), u = CharRNN.generator(1);
setTimeout(() => {
  let logits = s.step(0);
  for (let i = 0; i < 200; i++) logits = s.step(CharRNN.draw(logits, 1, u()));
  const t0 = performance.now();
  for (let i = 0; i < n; i++) logits = s.step(CharRNN.draw(logits, 1, u()));
  document.title = "done " + n / ((performance.now() - t0) / 1000);
}, 0);
</script>"""

ORT_PAGE = """<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">
<script src="ort.wasm.min.js"></script><script src="charrnn.js"></script><script>
(async () => {
  const n = Number(new URLSearchParams(location.search).get("n"));
  ort.env.wasm.numThreads = 1;  // one core, as the hand runtime uses
  const session = await ort.InferenceSession.create("model.onnx", {executionProviders: ["wasm"]});
  const state = {};
  for (const name of session.inputNames.filter((x) => x !== "ids")) {
    const shape = session.inputMetadata.find((m) => m.name === name).shape;
    const dims = shape.map((d) => (typeof d === "number" ? d : 1));
    state[name] = new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b)), dims);
  }
  const u = CharRNN.generator(1);
  async function step(id) {
    const ids = new ort.Tensor("int64", BigInt64Array.from([BigInt(id)]), [1]);
    const out = await session.run({ids, ...state});
    for (const name of Object.keys(state)) state[name] = out[name + "_out"];
    return out.logits.data;
  }
  let logits = await step(0);
  for (let i = 0; i < 200; i++) logits = await step(CharRNN.draw(logits, 1, u()));
  const t0 = performance.now();
  for (let i = 0; i < n; i++) logits = await step(CharRNN.draw(logits, 1, u()));
  document.title = "done " + n / ((performance.now() - t0) / 1000);
})().catch((e) => { document.title = "failed " + e; });
</script>"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_rate(chromium: str, url: str, timeout: float = 600) -> float:
    """Open `url` in headless Chromium and wait (real time) for its title to say 'done R'."""
    port = _free_port()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
        ]  # fmt: skip
        browser = subprocess.Popen(
            [chromium, *flags, url], stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                time.sleep(0.5)
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                        titles = [t["title"] for t in json.load(r) if t.get("type") == "page"]
                except OSError:
                    continue
                for title in titles:
                    if title.startswith("failed"):
                        raise RuntimeError(f"{url}: {title}")
                    if title.startswith("done "):
                        return float(title.split()[1])
            raise TimeoutError(url)
        finally:  # the browser and its helper processes: the group this Popen started
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait()


def ort_files(folder: str) -> str | None:
    """onnxruntime-web's WebAssembly build from npm, unpacked under `folder`; its version."""
    if shutil.which("npm") is None:
        return None
    done = subprocess.run(
        ["npm", "pack", "onnxruntime-web", "--silent"], cwd=folder, capture_output=True, text=True
    )
    if done.returncode != 0:
        return None
    tgz = os.path.join(folder, done.stdout.strip().splitlines()[-1])
    with tarfile.open(tgz) as tar:
        tar.extractall(folder, filter="data")
    return tgz.rsplit("-", 1)[1].removesuffix(".tgz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    work = tempfile.mkdtemp(prefix="charrnn-bench-web-")
    ort_version = ort_files(work)
    ort_dir = os.path.join(work, "package", "dist")
    if ort_version:
        ort_bytes = sum(os.path.getsize(os.path.join(ort_dir, f)) for f in ORT_FILES)
        print(f"onnxruntime-web {ort_version}: {', '.join(ORT_FILES)} = {ort_bytes / 1e6:.2f} MB")
    for name, options in SIZES.items():
        run = os.path.join(work, name)
        subprocess.run(
            [*CHARRNN, "train", CORPUS, "--out", run, "--max-steps", "1", "--force",
             "--batch-size", "2", "--seq-len", "16", "--val-chars", "1000", *options],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        site = os.path.join(work, name + "-site")
        ckpt = os.path.join(run, "last.pt")
        for fmt, out in (("web", site), ("onnx", os.path.join(site, "model.onnx"))):
            subprocess.run(
                [*CHARRNN, "export", ckpt, "--format", fmt, "--out", out],
                check=True, capture_output=True,
            )  # fmt: skip
        size = {f: os.path.getsize(os.path.join(site, f)) for f in os.listdir(site)}
        runtime = sum(size[f] for f in ("index.html", "page.js", "charrnn.js"))
        print(
            f"{name} LSTM: web export {(runtime + size['model.js']) / 1e6:.2f} MB "
            f"(model.js {size['model.js'] / 1e6:.2f} MB, page + runtime {runtime / 1e3:.1f} kB); "
            f"model.onnx {size['model.onnx'] / 1e6:.2f} MB"
        )
        if chromium is None:
            print("  no chromium: no characters/s")
            continue
        with open(os.path.join(site, "bench-hand.html"), "w") as f:
            f.write(HAND_PAGE)
        if ort_version:
            for f in ORT_FILES:
                shutil.copy(os.path.join(ort_dir, f), site)
            with open(os.path.join(site, "bench-ort.html"), "w") as f:
                f.write(ORT_PAGE)
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=site))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        rates: dict[str, list[float]] = {"hand": [], "ort": []}
        try:
            for _ in range(args.rounds):
                for runtime_name in rates if ort_version else ["hand"]:
                    url = f"{base}bench-{runtime_name}.html?n={args.chars}"
                    rates[runtime_name].append(page_rate(chromium, url))
        finally:
            server.shutdown()
            server.server_close()
        for runtime_name, values in rates.items():
            if values:
                print(
                    f"  {runtime_name:4} {statistics.median(values):8.0f} chars/s (median of "
                    f"{len(values)}: {', '.join(f'{v:.0f}' for v in values)})"
                )
    version = subprocess.run([chromium or "true", "--version"], capture_output=True, text=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{version.stdout.strip()}; load average {os.getloadavg()[0]:.2f}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
