"""GPU figures for issues 9 and 10: one prepared run of about 7 minutes on a lent GPU.

    bash bench/gpu.sh                  # on the GPU machine; everything lands in $OUT
    python bench/gpu.py --dry-run      # here, on CPU: tiny models, a 20 s training run

Sections, in order; each runs in its own process under its own time guard, so a failure,
a hang or a timeout is logged and the next section still runs; results.json and
results.md are rewritten after every section (a kill keeps what was done):

  1 env         nvidia-smi -L, torch / CUDA / cuDNN versions, GPU name, bf16
  2 cuda_tests  pytest tests/test_cuda.py (skipped on CPU)
  3 throughput  LSTM 2x512 and 3x1024, batch 64 and 128, fp32 and bf16, window 64:
                charrnn's own training.train() against a bare nn.LSTM loop (issue 9)
  4 vocab       the default model at V = 65, 2,000, 6,000 (--input auto), bf16, and
                one-hot at 6,000 for contrast (issue 10)
  5 train       `charrnn train` on Tiny Shakespeare for 3 minutes on the GPU, then
                `charrnn info --json` and a 300-character sample from best.pt
  6 torchrun    300 steps plain, under torchrun (NCCL, 1 process), and with the
                --nproc-per-node 1 shortcut: validation loss and chars/s of each (issue 9)

Throughput figures are medians over interleaved rounds (bare, ours, bare, ours), each
timed after warm-up steps, with CUDA synchronised at the ends of the timed span; a ratio
is median(ours) / median(bare); results.json also keeps every round and its ratio.
"fp32" allows TF32 matmuls on both sides (charrnn's CUDA setting, configure_backends).

Files under $OUT (or --out, else ./gpu-out): results.json, results.md, log.txt,
train-metrics.jsonl (section 5's metrics.jsonl); bench/gpu.sh adds console.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join("corpora", "tinyshakespeare.txt")  # relative: commands run in ROOT
PY = sys.executable


# ------------------------------------------------------------------ the report


class Report:
    """results.json, results.md and log.txt under the output folder, rewritten as we go."""

    def __init__(self, out: str, dry_run: bool):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.log_file = open(os.path.join(out, "log.txt"), "a", encoding="utf-8")  # noqa: SIM115
        self.started = time.time()
        self.results: dict = {
            "dry_run": dry_run,
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "sections": {},
        }

    def log(self, message: str) -> None:
        stamp = f"[{time.time() - self.started:6.1f}s]"
        for line in message.splitlines() or [""]:
            print(f"{stamp} {line}", flush=True)
            self.log_file.write(f"{stamp} {line}\n")
        self.log_file.flush()

    def section(self, name: str) -> dict:
        return self.results["sections"].setdefault(name, {})

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - self.started, 1)
        path = os.path.join(self.out, "results.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self.results, f, indent=1, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        with open(os.path.join(self.out, "results.md"), "w", encoding="utf-8") as f:
            f.write(markdown(self.results))


def run_cmd(report: Report, argv: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a command in ROOT, its output streamed into the log; killed (its whole process
    group: torchrun's workers too) after `timeout` seconds. Never raises."""
    report.log("$ " + " ".join(argv) + f"   (guard {timeout:.0f}s)")
    t0 = time.perf_counter()
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as e:
        report.log(f"  could not start: {e}")
        return {"rc": None, "error": str(e), "seconds": 0.0, "timed_out": False, "lines": []}

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            report.log("  | " + line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        report.log(f"  timed out after {timeout:.0f}s: SIGTERM to the process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=5)
    seconds = time.perf_counter() - t0
    report.log(f"  exit {proc.returncode} after {seconds:.1f}s")
    return {"rc": proc.returncode, "seconds": round(seconds, 1), "timed_out": timed_out,
            "lines": lines}  # fmt: skip


def child_env(tmp: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["CHARRNN_CACHE_DIR"] = os.path.join(tmp, "cache")  # not the machine's ~/.cache
    return env


def tail(lines: list[str], n: int = 15) -> list[str]:
    return lines[-n:]


# ------------------------------------------------------- sections run by the parent


def section_env(report: Report, ctx: dict, guard: float) -> None:
    res = report.section("env")
    smi = run_cmd(report, ["nvidia-smi", "-L"], min(guard, 20), ctx["env"])
    res["nvidia_smi_L"] = smi["lines"] if smi["rc"] == 0 else f"failed: {smi.get('error', smi)}"
    child_section(report, ctx, "env", max(5.0, guard - smi["seconds"]))


def section_cuda_tests(report: Report, ctx: dict, guard: float) -> None:
    argv = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    r = run_cmd(report, argv, guard, ctx["env"])
    counts = {}
    for line in r["lines"][-5:]:
        for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", line):
            counts[word] = int(number)
    report.section("cuda_tests").update(
        command=" ".join(argv), rc=r["rc"], seconds=r["seconds"], timed_out=r["timed_out"],
        counts=counts, tail=tail(r["lines"]),
    )  # fmt: skip


def child_section(report: Report, ctx: dict, name: str, guard: float) -> None:
    """A section with torch in it runs in a child process (`--section NAME`), which writes
    its partial results after each measurement: a timeout keeps the finished ones."""
    partial = os.path.join(ctx["tmp"], f"{name}.json")
    argv = [PY, os.path.join("bench", "gpu.py"), "--section", name, "--partial", partial]
    argv += ["--dry-run"] if ctx["dry_run"] else []
    r = run_cmd(report, argv, guard, ctx["env"])
    res = report.section(name)
    res.update(rc=r["rc"], seconds=r["seconds"], timed_out=r["timed_out"])
    if r["rc"] != 0:
        res["tail"] = tail(r["lines"], 25)
    if os.path.exists(partial):
        with open(partial, encoding="utf-8") as f:
            res.update(json.load(f))


def section_throughput(report: Report, ctx: dict, guard: float) -> None:
    child_section(report, ctx, "throughput", guard)


def section_vocab(report: Report, ctx: dict, guard: float) -> None:
    child_section(report, ctx, "vocab", guard)


def train_summary(run_dir: str, lines: list[str], batch: int, seq_len: int) -> dict:
    """What a finished `charrnn train` left: its metrics.jsonl and its progress lines."""
    summary: dict = {}
    metrics = os.path.join(ROOT, run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        evals = [r for r in records if "val_loss" in r]
        if evals:
            last = evals[-1]
            summary.update(
                evaluations=len(evals),
                steps=last["step"],
                last_val_loss=round(last["val_loss"], 4),
                best_val_loss=round(min(r["val_loss"] for r in evals), 4),
                elapsed_s=last.get("elapsed"),
                # whole run: evaluations and startup included
                chars_per_sec_overall=round(last["step"] * batch * seq_len / last["elapsed"])
                if last.get("elapsed")
                else None,
            )
    found = (re.findall(r"([\d,]+) chars/s", line) for line in lines)
    rates = [float(m.replace(",", "")) for matches in found for m in matches]
    if rates:
        summary["chars_per_sec_progress_last"] = rates[-1]
        summary["chars_per_sec_progress_median"] = statistics.median(rates)
    for line in lines:
        if line.startswith("done:") or line.startswith("error:"):
            summary["final_line"] = line
            done = re.match(r"done: ([\d,]+) steps", line)
            if done:  # the last evaluation may come before the last step
                summary["steps_done"] = int(done.group(1).replace(",", ""))
    return summary


def section_train(report: Report, ctx: dict, guard: float) -> None:
    dry = ctx["dry_run"]
    res = report.section("train")
    time_limit = ctx["train_time"]
    if guard - 25 < time_limit:  # earlier sections overran: shorter, rather than killed
        time_limit = max(min(30.0, time_limit), guard - 25)
        report.log(f"  the budget leaves {guard:.0f}s: --time-limit {time_limit:.0f}s")
    run_dir = os.path.join(ctx["tmp"], "train")
    hidden, layers, batch = (64, 1, 16) if dry else (512, 2, 128)
    argv = [PY, "-m", "charrnn", "train", CORPUS, "--out", run_dir,
            "--time-limit", f"{time_limit:.0f}s", "--device", ctx["device"],
            "--hidden-size", str(hidden), "--num-layers", str(layers), "--dropout", "0.25",
            "--batch-size", str(batch), *ctx["precision"], "--force"]  # fmt: skip
    r = run_cmd(report, argv, time_limit + 25, ctx["env"])
    res.update(command=" ".join(argv), rc=r["rc"], seconds=r["seconds"], timed_out=r["timed_out"])
    res.update(train_summary(run_dir, r["lines"], batch, 64))
    metrics = os.path.join(ROOT, run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        shutil.copy(metrics, os.path.join(report.out, "train-metrics.jsonl"))
    report.save()
    best = os.path.join(run_dir, "best.pt")
    if not os.path.exists(os.path.join(ROOT, best)):
        res["tail"] = tail(r["lines"], 25)
        return
    info = run_cmd(report, [PY, "-m", "charrnn", "info", best, "--json"], 30, ctx["env"])
    with contextlib.suppress(ValueError, KeyError):
        data = json.loads("\n".join(info["lines"]))
        keys = ("best_val_loss", "best_val_bpc", "step", "num_params", "model")
        res["info"] = {k: data.get(k) for k in keys}
    sample = run_cmd(
        report,
        [PY, "-m", "charrnn", "sample", "--checkpoint", best, "--length", "300",
         "--random-seed", "0", "--seed", "ROMEO:"],
        30,
        ctx["env"],
    )  # fmt: skip
    res["sample"] = "\n".join(sample["lines"])


def section_choice(report: Report, ctx: dict, guard: float) -> None:
    """What charrnn would choose for Tiny Shakespeare and 5 minutes on this GPU, with every
    candidate size timed there (`train --dry-run`): the rule's GPU data point."""
    res = report.section("choice")
    argv = [PY, "-m", "charrnn", "train", CORPUS, "--time-limit", "5m", "--dry-run",
            "--device", ctx["device"], *ctx["precision"]]  # fmt: skip
    r = run_cmd(report, argv, min(guard, 60.0), ctx["env"])
    res.update(command=" ".join(argv), rc=r["rc"], seconds=r["seconds"], timed_out=r["timed_out"])
    res["plan"] = [line for line in r["lines"] if line.startswith(("model:", "speed:", "budget:"))]


def section_torchrun(report: Report, ctx: dict, guard: float) -> None:
    dry = ctx["dry_run"]
    res = report.section("torchrun")
    steps = 10 if dry else 300
    size = ["--hidden-size", "32"] if dry else []
    each = min(60.0, guard / 3)
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    runs = {"plain": [PY, "-m"], "torchrun": [*torchrun, "-m"], "shortcut": [PY, "-m"]}
    for name, launcher in runs.items():
        run_dir = os.path.join(ctx["tmp"], f"ddp-{name}")
        argv = [*launcher, "charrnn", "train", CORPUS, "--out", run_dir, "--max-steps",
                str(steps), "--device", ctx["device"], *size, *ctx["precision"],
                "--force"]  # fmt: skip
        if name == "shortcut":
            argv += ["--nproc-per-node", "1"]
        try:
            r = run_cmd(report, argv, each, ctx["env"])
            entry = {"command": " ".join(argv), "rc": r["rc"], "seconds": r["seconds"],
                     "timed_out": r["timed_out"]}  # fmt: skip
            entry.update(train_summary(run_dir, r["lines"], 24, 64))
            if r["rc"] != 0:
                entry["tail"] = tail(r["lines"], 20)
        except Exception:
            entry = {"command": " ".join(argv), "error": traceback.format_exc()}
            report.log(entry["error"])
        res[name] = entry
        report.save()
    plain = res.get("plain", {}).get("last_val_loss")
    for name in ("torchrun", "shortcut"):
        other = res.get(name, {}).get("last_val_loss")
        if plain is not None and other is not None:
            res[f"{name}_minus_plain_val_loss"] = round(other - plain, 4)


# (name, function, longest it may take, least it needs to be worth starting: seconds on
# the GPU; a dry run needs a quarter). A section's guard is the smaller of the first and
# what the overall budget leaves after the later sections' least needs.
SECTIONS = [
    ("env", section_env, 60, 10),
    ("cuda_tests", section_cuda_tests, 120, 30),
    ("throughput", section_throughput, 170, 60),
    ("vocab", section_vocab, 80, 30),
    ("train", section_train, None, 90),  # None: --train-time + 40 s
    ("torchrun", section_torchrun, 180, 60),
    ("choice", section_choice, 60, 20),
]


# ------------------------------------------------- sections run in a child (torch)


def write_partial(path: str, data: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def child_env_info(args) -> None:
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
        with contextlib.suppress(Exception):  # a tuple or an int, by torch version
            info["nccl"] = str(torch.cuda.nccl.version())
    print(json.dumps(info, indent=1), flush=True)
    write_partial(args.partial, info)


class Bench:
    """Shared pieces of the throughput and vocabulary sections."""

    def __init__(self, args):
        import torch

        from charrnn.device import configure_backends

        self.torch = torch
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.warm = 2 if self.dry else 5  # steps before timing: cuDNN plans, allocator
        configure_backends(self.device)  # the same TF32 / cuDNN settings for both sides
        # Beside the partial results, in the parent's folder: removed when the run ends.
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(args.partial)), args.section)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def bare(self, ids, vocab_size, hidden, layers, batch, seq_len, precision, seconds):
        """A bare loop of the same shapes: one-hot -> nn.LSTM -> Linear -> cross-entropy,
        Adam (fused on CUDA), clip_grad_norm_, hidden carried and detached. chars/s."""
        torch = self.torch
        import torch.nn as nn
        import torch.nn.functional as F

        from charrnn.device import autocast

        torch.manual_seed(0)
        rnn = nn.LSTM(vocab_size, hidden, layers, batch_first=True).to(self.device)
        head = nn.Linear(hidden, vocab_size).to(self.device)
        params = [*rnn.parameters(), *head.parameters()]
        fused = {"fused": True} if self.device.type == "cuda" else {}
        opt = torch.optim.Adam(params, lr=2e-3, **fused)
        n = (len(ids) - 1) // batch
        data = ids.long().to(self.device)
        x_all = data[: n * batch].view(batch, n)  # (B, n): stream b is row b
        y_all = data[1 : n * batch + 1].view(batch, n)
        windows = n // seq_len
        state = {"h": None, "i": 0}

        def step():
            s = (state["i"] % windows) * seq_len
            state["i"] += 1
            x, y = x_all[:, s : s + seq_len], y_all[:, s : s + seq_len]  # (B, T)
            with autocast(self.device, precision):
                out, h = rnn(F.one_hot(x, vocab_size).float(), state["h"])  # (B, T, H)
                logits = head(out)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            state["h"] = tuple(t.detach() for t in h)

        for _ in range(self.warm):
            step()
        self.sync()
        t0, steps = time.perf_counter(), 0
        while True:
            for _ in range(5):  # synchronise only now and then, as a plain loop would
                step()
            steps += 5
            self.sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return steps * batch * seq_len / elapsed

    def ours(self, corpus, model_config, batch, seq_len, precision, seconds, name):
        """charrnn's training.train() (data path, autocast, clipping, the loss read back
        each step, the event callback): chars/s between StepDone events after warm-up.
        Stopped through its StopRequest, so no validation runs."""
        from charrnn.config import TrainConfig
        from charrnn.rundir import RunDir
        from charrnn.training import StepDone, StopRequest, train

        warm = self.warm
        config = TrainConfig(
            batch_size=batch,
            seq_len=seq_len,
            max_steps=10**7,
            eval_every=10**9,
            precision=precision,
            device=str(self.device),
            sample_length=0,
        )
        stop = StopRequest()
        marks: list[tuple[int, float]] = []

        def on_event(event):
            if not isinstance(event, StepDone) or stop:
                return
            now = time.perf_counter()  # the step's loss was read back: the GPU is done
            if event.step == warm:
                marks.append((event.step, now))
            elif marks and now - marks[0][1] >= seconds:
                marks.append((event.step, now))
                stop.set("benchmark")

        run_dir = RunDir(os.path.join(self.tmp, name))
        run_dir.prepare(resume=False, force=True)
        train(model_config, config, corpus, run_dir, on_event, stop=stop)
        (s0, t0), (s1, t1) = marks
        return (s1 - s0) * batch * seq_len / (t1 - t0)


def child_throughput(args) -> None:
    from charrnn.config import ModelConfig
    from charrnn.corpus import build_corpus, read_text

    bench = Bench(args)
    corpus = build_corpus(read_text(os.path.join(ROOT, CORPUS)), 0.1, 1)
    v = len(corpus.vocab)
    shapes = [(2, 32)] if bench.dry else [(2, 512), (3, 1024)]
    batches = (8,) if bench.dry else (64, 128)
    # dry: one round (CPU bf16 can be very slow on a loaded machine)
    seconds, rounds, seq_len = (0.3, 1, 64) if bench.dry else (1.0, 2, 64)
    result = {"seq_len": seq_len, "seconds_per_block": seconds, "rounds": rounds, "rows": []}
    for layers, hidden in shapes:
        for batch in batches:
            for precision in ("fp32", "bf16"):
                model_config = ModelConfig(  # dropout 0: the bare loop's work exactly
                    "lstm", v, hidden, layers, dropout=0.0, input="onehot"
                )
                base, ours = [], []
                for _ in range(rounds):
                    base.append(bench.bare(corpus.train, v, hidden, layers, batch, seq_len,
                                           precision, seconds))  # fmt: skip
                    ours.append(bench.ours(corpus, model_config, batch, seq_len, precision,
                                           seconds, "tp"))  # fmt: skip
                row = {
                    "model": f"lstm {layers}x{hidden}",
                    "batch": batch,
                    "precision": precision,
                    "bare_chars_per_sec": round(statistics.median(base)),
                    "ours_chars_per_sec": round(statistics.median(ours)),
                    "ratio": round(statistics.median(ours) / statistics.median(base), 3),
                    "ratio_per_round": [round(o / b, 3) for o, b in zip(ours, base, strict=True)],
                    "bare_runs": [round(x) for x in base],
                    "ours_runs": [round(x) for x in ours],
                }
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                write_partial(args.partial, result)


def child_vocab(args) -> None:
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from run import hangul_corpus

    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.corpus import build_corpus, read_text

    bench = Bench(args)
    chars = 50_000 if bench.dry else 1_200_000
    corpora = {65: build_corpus(read_text(os.path.join(ROOT, CORPUS)), 0.002, 1)}
    corpora |= {v: hangul_corpus(v, chars) for v in (2000, 6000)}
    # The defaults (LSTM 2x256, dropout 0.2, batch 24, window 64); dry: a smaller model.
    hidden = 32 if bench.dry else ModelConfig.hidden_size
    batch, seq_len = TrainConfig.batch_size, TrainConfig.seq_len
    precision = "fp32" if bench.dry else "bf16"  # dry: CPU bf16 can be very slow
    seconds, rounds = (0.2, 1) if bench.dry else (1.2, 2)
    cases = [(65, "auto"), (2000, "auto"), (6000, "auto"), (6000, "onehot")]
    runs: dict = {case: [] for case in cases}
    result = {"hidden_size": hidden, "batch": batch, "seq_len": seq_len, "precision": precision,
              "seconds_per_block": seconds, "rounds": rounds, "rows": []}  # fmt: skip
    for _ in range(rounds):  # interleaved: a change in speed hits every size alike
        for v, input in cases:
            config = ModelConfig(vocab_size=v, hidden_size=hidden, input=input)
            rate = bench.ours(corpora[v], config, batch, seq_len, precision, seconds, "vocab")
            runs[v, input].append(rate)
            print(f"V={v} input={input} ({config.input}): {rate:,.0f} chars/s", flush=True)
            result["rows"] = vocab_rows(cases, runs)
            write_partial(args.partial, result)


def vocab_rows(cases, runs) -> list[dict]:
    """One row per case measured so far, each against V=65 in the same rounds."""
    from charrnn.config import ModelConfig

    rows = []
    for v, input in cases:
        done = runs[v, input]
        base = runs[65, "auto"][: len(done)]
        if not done:
            continue
        rows.append(
            {
                "vocab_size": v,
                "input": input,
                "resolved_input": ModelConfig(vocab_size=v, input=input).input,
                "chars_per_sec": round(statistics.median(done)),
                "ratio_to_v65": round(statistics.median(done) / statistics.median(base), 3),
                "ratio_per_round": [round(o / b, 3) for o, b in zip(done, base, strict=True)],
                "runs": [round(x) for x in done],
            }
        )
    return rows


CHILDREN = {"env": child_env_info, "throughput": child_throughput, "vocab": child_vocab}


# ------------------------------------------------------------------ results.md


def markdown(results: dict) -> str:
    s = results["sections"]
    lines = [f"# GPU figures ({'DRY RUN on CPU' if results['dry_run'] else 'GPU'}), "
             f"{results['started_utc']} UTC, {results.get('elapsed_s', 0):.0f} s", ""]  # fmt: skip
    env = s.get("env", {})
    if "torch" in env:
        keys = ("gpu", "torch", "torch_cuda", "cudnn", "bf16_supported", "nccl", "python")
        lines += ["env: " + ", ".join(f"{k} {env.get(k)}" for k in keys), ""]
    tests = s.get("cuda_tests", {})
    if "rc" in tests:
        lines += [f"tests/test_cuda.py: {tests.get('counts')} (rc {tests.get('rc')})", ""]
    tp = s.get("throughput", {})
    if tp.get("rows"):
        lines += [
            f"Training throughput, window {tp['seq_len']}, one-hot V=65, dropout 0 "
            f"(median of {tp['rounds']} interleaved rounds of {tp['seconds_per_block']} s):",
            "",
            "| model | batch | precision | bare nn.LSTM chars/s | charrnn chars/s | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for r in tp["rows"]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['precision']} | "
                f"{r['bare_chars_per_sec']:,} | {r['ours_chars_per_sec']:,} | {r['ratio']:.2f}x |"
            )
        lines.append("")
    vocab = s.get("vocab", {})
    if vocab.get("rows"):
        lines += [
            f"Vocabulary sizes: LSTM 2x{vocab['hidden_size']}, batch {vocab['batch']}, window "
            f"{vocab['seq_len']}, {vocab['precision']}, defaults otherwise:",
            "",
            "| V | --input (resolved) | chars/s | vs V=65 |",
            "|---|---|---|---|",
        ]
        for r in vocab["rows"]:
            lines.append(
                f"| {r['vocab_size']:,} | {r['input']} ({r['resolved_input']}) | "
                f"{r['chars_per_sec']:,} | {r['ratio_to_v65']:.2f}x |"
            )
        lines.append("")
    train = s.get("train", {})
    if "command" in train:
        lines += [
            f"Training run: `{train.get('command')}`",
            f"steps {train.get('steps_done')} (last evaluation at {train.get('steps')}), "
            f"best val loss {train.get('best_val_loss')} nats/char, "
            f"chars/s {train.get('chars_per_sec_progress_median')} (median of progress lines), "
            f"{train.get('chars_per_sec_overall')} (overall), rc {train.get('rc')}",
            "",
        ]
    ddp = s.get("torchrun", {})
    if "plain" in ddp:
        lines += [
            "| launch | rc | steps | val loss | chars/s (whole run) |",
            "|---|---|---|---|---|",
        ]
        for name in ("plain", "torchrun", "shortcut"):
            r = ddp.get(name)
            if r:
                lines.append(
                    f"| {name} | {r.get('rc')} | {r.get('steps')} | {r.get('last_val_loss')} | "
                    f"{r.get('chars_per_sec_overall')} |"
                )
        lines.append("")
    failed = [name for name, r in s.items() if _failed(r)]
    if failed:
        lines += [f"sections with a failure: {', '.join(failed)} (see results.json, log.txt)", ""]
    skipped = [name for name, r in s.items() if "skipped" in r]
    if skipped:
        lines += [f"sections skipped (out of budget): {', '.join(skipped)}", ""]
    return "\n".join(lines)


def _failed(result: dict) -> bool:
    """A section, or one of its commands (torchrun's three), failed or timed out."""
    parts = [result, *(v for v in result.values() if isinstance(v, dict))]
    return any(p.get("rc") not in (0, None) or p.get("error") or p.get("timed_out") for p in parts)


# ------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (~1-2 min)")
    parser.add_argument("--out", help="output folder (default: $OUT, else ./gpu-out)")
    parser.add_argument("--budget", type=float, help="seconds for everything (420; dry 240)")
    parser.add_argument("--train-time", type=float, help="section 5's --time-limit (180; dry 20)")
    parser.add_argument("--only", help="comma-separated section names (a short rerun)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # a child process's job
    parser.add_argument("--partial", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        sys.path.insert(0, ROOT)
        CHILDREN[args.section](args)
        return

    chosen = args.only.split(",") if args.only else [name for name, *_ in SECTIONS]
    unknown = set(chosen) - {name for name, *_ in SECTIONS}
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    plan = [s for s in SECTIONS if s[0] in chosen]
    out = os.path.abspath(args.out or os.environ.get("OUT") or os.path.join(ROOT, "gpu-out"))
    budget = args.budget or (240.0 if args.dry_run else 420.0)
    scale = 0.25 if args.dry_run else 1.0
    report = Report(out, args.dry_run)
    tmp = tempfile.mkdtemp(prefix="charrnn-gpu-")
    ctx = {
        "dry_run": args.dry_run,
        "device": "cpu" if args.dry_run else "cuda",
        "tmp": tmp,
        "env": child_env(tmp),
        "train_time": args.train_time or (20.0 if args.dry_run else 180.0),
        # CLI runs: charrnn's default (auto: bf16 on the GPU); dry: fp32, as CPU bf16
        # can be very slow on a loaded machine
        "precision": ["--precision", "fp32"] if args.dry_run else [],
    }
    report.results.update(budget_s=budget, out=out)
    report.log(f"bench/gpu.py: sections {', '.join(n for n, *_ in plan)}; budget {budget:.0f}s; "
               f"out {out}")  # fmt: skip
    try:
        for i, (name, fn, longest, least) in enumerate(plan):
            if longest is None:
                longest = ctx["train_time"] + 40
            left = budget - (time.time() - report.started)
            later = sum(s[3] for s in plan[i + 1 :]) * scale
            guard = min(longest, left - later)
            res = report.section(name)
            if guard < least * scale:
                report.log(f"== {name}: skipped, the budget leaves {guard:.0f}s (needs {least}s)")
                res["skipped"] = f"out of budget ({guard:.0f}s left for it)"
                report.save()
                continue
            report.log(f"== {name} (guard {guard:.0f}s)")
            t0 = time.perf_counter()
            try:
                fn(report, ctx, guard)
            except Exception:
                res["error"] = traceback.format_exc()
                report.log(f"{name} failed:\n{res['error']}")
            res["section_seconds"] = round(time.perf_counter() - t0, 1)
            report.save()
            report.log(f"== {name} done in {res['section_seconds']:.0f}s")
    finally:
        report.save()
        shutil.rmtree(tmp, ignore_errors=True)
    report.log("\n" + markdown(report.results))
    report.log(f"all done in {time.time() - report.started:.0f}s; files in {out}")


if __name__ == "__main__":
    main()
