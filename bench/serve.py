"""`charrnn serve` under load: aggregate and per-stream characters per second for 1, 2, 4,
..., 64 concurrent streaming requests, each for the same number of characters.

    python bench/serve.py                       # the default model (LSTM 2 x 256), 4,000 chars
    python bench/serve.py --checkpoint run/best.pt --streams 1,16 --runs 5
    python bench/serve.py --lanes 1,auto        # one lane against one per core, side by side
    python bench/serve.py --checkpoint run/best.pt --stepper   # the model's step alone

Starts the real server (`python -m charrnn serve`) in a subprocess on a free port, then for
each count N sends N requests at once from one asyncio client (plain sockets, HTTP/1.0, so
the client costs little of the CPU it shares with the server) and times them: aggregate =
N x length / seconds until the last stream ends; per-stream = the mean over streams of
length / that stream's seconds; and characters per CPU-second of the server and its lane
processes (user + system time from /proc), which a busy neighbour changes less than it
changes the rates. The median of --runs runs each, the runs taken in turn over the servers
and counts. Without --checkpoint it
trains a default-size model for one step (its speed does not depend on how well it is
trained). The machine is shared: note `uptime` beside the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpora", "tinyshakespeare.txt")
# A server measures the load of other programs over this many seconds (engine.Room): the
# other server's runs must be out of that window.
LOOK_SECONDS = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, max_streams: int, lanes: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "charrnn", "serve", checkpoint, "--port", str(port)]
    cmd += ["--max-streams", str(max_streams)] + ([] if lanes == "auto" else ["--lanes", lanes])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer /health within 120 s")


async def one_stream(port: int, body: dict) -> tuple[float, int]:
    """Seconds from connecting to the end of the body, and the characters received."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        b"POST /v1/generate HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    raw = await reader.read(-1)  # HTTP/1.0: the body ends when the server closes
    writer.close()
    head, _, text = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"request failed: {head.decode(errors='replace')}")
    return time.perf_counter() - t0, len(text.decode("utf-8"))


async def one_run(port: int, n: int, length: int) -> tuple[float, float]:
    body = {"seed": "T", "length": length}
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream(port, body) for _ in range(n)))
    wall = time.perf_counter() - t0
    for _, chars in results:
        if chars != length + 1:
            raise SystemExit(f"a stream brought {chars} characters, not {length + 1}")
    per_stream = statistics.mean(length / seconds for seconds, _ in results)
    return n * length / wall, per_stream


def default_checkpoint(folder: str) -> str:
    sys.path.insert(0, ROOT)
    import charrnn

    charrnn.train(CORPUS, out=folder, max_steps=1, on_event=lambda e: None)
    return os.path.join(folder, "last.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--streams", default="1,2,4,8,16,32,64")
    parser.add_argument("--length", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--lanes", default="auto", help="servers to compare, e.g. 1,auto (--lanes of serve)"
    )
    parser.add_argument(
        "--stepper", action="store_true", help="time the model's step alone, by rows"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    if args.stepper:
        with tempfile.TemporaryDirectory() as tmp:
            return time_stepper(args.checkpoint or default_checkpoint(tmp), counts)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or default_checkpoint(tmp)
        servers = {}
        try:
            for lanes in args.lanes.split(","):
                port = free_port()
                servers[lanes] = (start_server(checkpoint, port, max(counts), lanes), port)
            # Runs go round the servers and counts, so a neighbour's load falls on all alike.
            results: dict[tuple, list] = {(lanes, n): [] for lanes in servers for n in counts}
            last = None
            for _ in range(args.runs):
                for (lanes, n), found in results.items():
                    proc, port = servers[lanes]
                    if last not in (None, lanes):  # the other server's load, out of view
                        time.sleep(LOOK_SECONDS + 0.5)
                    last = lanes
                    cpu0 = cpu_seconds(proc.pid)
                    agg, per = asyncio.run(one_run(port, n, args.length))
                    found.append((agg, per, n * args.length / (cpu_seconds(proc.pid) - cpu0)))
                    print(
                        f"lanes {lanes}, {n:>3} streams: {agg:>8,.0f} chars/s in all, "
                        f"{per:>7,.0f} per stream",
                        file=sys.stderr,
                    )
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(15)
    print(
        f"\n{args.length:,} characters per stream, median of {args.runs} runs; load: "
        f"{os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| lanes | streams | chars/s, all streams | chars/s, per stream | x one stream "
        "| chars per server CPU-second | x one stream |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for lanes in servers:
        rows = [
            (n, *(statistics.median(r[i] for r in results[lanes, n]) for i in range(3)))
            for n in counts
        ]
        base, base_cpu = rows[0][1], rows[0][3]
        for n, agg, per, cpu in rows:
            print(
                f"| {lanes} | {n} | {agg:,.0f} | {per:,.0f} | {agg / base:.1f}x | {cpu:,.0f} "
                f"| {cpu / base_cpu:.1f}x |"
            )


def time_stepper(checkpoint: str, counts: list[int]) -> None:
    """CPU microseconds of one step of the sampler's stepper for N rows, one BLAS thread
    (as the server runs it): the best of 5 blocks of 300 steps (time.thread_time)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import charrnn
    from charrnn.sample import NumpyStepper
    from charrnn.serve.lane import one_thread

    one_thread()
    model = charrnn.load(checkpoint)
    print("| rows | µs of CPU per step | µs per row | x one row's cost |")
    print("| ---: | ---: | ---: | ---: |")
    one = None
    for n in counts:
        stepper, ids = NumpyStepper(model.module, n), np.zeros(n, np.int64)
        blocks = []
        for _ in range(5):
            t0 = time.thread_time()
            for _ in range(300):
                stepper.step(ids)
            blocks.append((time.thread_time() - t0) / 300 * 1e6)
        us = min(blocks)
        one = one or us
        print(f"| {n} | {us:,.0f} | {us / n:,.0f} | {us / one:.1f}x |")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process and its lane processes (Linux /proc)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


if __name__ == "__main__":
    main()
