"""`charrnn serve`: the real server in a subprocess on a free port, with the tiny trained
model of conftest.py; the engine alone, without HTTP."""

from __future__ import annotations

import html
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import run_cli

import charrnn
from charrnn.config import SampleConfig
from charrnn.serve import Engine, EngineBusy, Job
from charrnn.serve.engine import MAX_LANES

pytestmark = pytest.mark.slow
MAX_STREAMS, MAX_QUEUE = 6, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: str, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "charrnn", "serve", checkpoint, "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if get(port, "/health")[0] == 200:
                return proc, port
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start")


def request(port: int, method: str, path: str, body=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read().decode("utf-8"), response


def get(port: int, path: str):
    status, text, _ = request(port, "GET", path)
    return status, text


def health(port: int) -> dict:
    return json.loads(get(port, "/health")[1])


@pytest.fixture(scope="module")
def checkpoint(trained) -> str:
    return os.path.join(trained, "best.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return charrnn.load(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    proc, port = start(
        checkpoint, "--max-streams", str(MAX_STREAMS), "--max-queue", str(MAX_QUEUE),
        "--max-length", "1000000",
    )  # fmt: skip
    yield port
    proc.terminate()
    proc.wait(15)


def test_a_stream_is_the_seed_then_the_text_of_charrnn_sample(server, checkpoint):
    body = {"seed": "Th", "length": 300, "temperature": 0.9, "random_seed": 7}
    status, text, response = request(server, "POST", "/v1/generate", body)
    assert status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    cli = run_cli("sample", "-c", checkpoint, "--seed", "Th", "-n", "300", "-t", "0.9",
                  "--random-seed", "7")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert text == cli.stdout.removesuffix("\n") and text.startswith("Th")
    assert len(text) == 302


def test_stream_false_answers_one_json_body(server, model):
    body = {"seed": "A", "length": 80, "stop_at": "e", "random_seed": 3, "stream": False}
    status, text, _ = request(server, "POST", "/v1/generate", body)
    answer = json.loads(text)
    expected = model.sample(seed="A", length=80, stop_at="e", random_seed=3)
    assert status == 200 and answer["text"] == expected
    assert answer["generated"] == expected[1:] and answer["seed"] == "A"
    assert answer["finish_reason"] == ("stop" if expected.endswith("e") else "length")


def test_concurrent_streams_each_give_their_own_sample(server, model):
    """Seeded streams run beside each other and beside unseeded ones (which share the
    batched step) and each still gives exactly the library's text for its options."""
    seeded = [
        {"seed": "T", "length": 400, "random_seed": 1},
        {"seed": "He", "length": 350, "random_seed": 2, "temperature": 1.2, "top_k": 5},
        {"seed": "A", "length": 300, "random_seed": 3, "top_p": 0.8},
        {"seed": "W", "length": 250, "temperature": 0},
    ]
    noise = [{"seed": "T", "length": 500}] * 2
    results: dict[int, str] = {}

    def fetch(i: int, body: dict) -> None:
        results[i] = request(server, "POST", "/v1/generate", body)[1]

    threads = [threading.Thread(target=fetch, args=x) for x in enumerate(seeded + noise)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, body in enumerate(seeded):
        assert results[i] == model.sample(**body), body
    assert all(len(results[i]) == 501 for i in range(len(seeded), len(threads)))


def test_score_is_charrnn_eval(server, model):
    text = "To be, or not to be, that is the question"
    status, answer, _ = request(server, "POST", "/v1/score", {"text": text})
    answer = json.loads(answer)
    assert status == 200 and answer["loss_nats"] == pytest.approx(model.score(text), rel=1e-6)
    assert answer["num_predicted"] == len(text) - 1


def test_health_playground_and_openapi(server):
    info = health(server)
    assert info["status"] == "ok" and info["limits"]["max_streams"] == MAX_STREAMS
    assert info["lanes"] == min(len(os.sched_getaffinity(0)), MAX_LANES)  # one per core
    status, page = get(server, "/")
    assert status == 200 and "/v1/generate" in page and 'id="output"' in page
    # Static: nothing is fetched from anywhere but this server.
    assert "http:" not in page and "https:" not in page and "src=" not in page
    spec = json.loads(get(server, "/openapi.json")[1])
    assert {"/v1/generate", "/v1/score", "/health"} <= set(spec["paths"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_the_playground_streams_text_in_a_browser(server, model, tmp_path):
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
        "--virtual-time-budget=20000",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{server}/?seed=Th&length=200&temperature=0.7&random_seed=9"
    # Virtual time runs on while a streamed body trickles in, so on a loaded machine the
    # DOM can be taken before the stream ends (data-done="no"): such a dump is taken
    # again. A page that never finishes fails all three.
    for _ in range(3):
        dom = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=90
        ).stdout
        if 'data-done="yes"' in dom:
            break
    assert 'data-done="yes"' in dom, dom[dom.find("<body") :][:600]
    shown = html.unescape(dom.split('<pre id="output">')[1].split("</pre>")[0])
    assert shown == model.sample(seed="Th", length=200, temperature=0.7, random_seed=9)


@pytest.mark.parametrize(
    "raw, status, field",
    [
        (b"not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"seed": "Th\\u2603"}', 422, "seed"),
        (b'{"seed": ""}', 422, "seed"),
        (b'{"length": -1}', 422, "length"),
        (b'{"length": 10000000}', 422, "length"),
        (b'{"length": "5"}', 422, "length"),
        (b'{"temperature": true}', 422, "temperature"),
        (b'{"temperature": -1}', 422, "temperature"),
        (b'{"top_p": 1.5}', 422, "top_p"),
        (b'{"top_k": 0}', 422, "top_k"),
        (b'{"random_seed": -2}', 422, "random_seed"),
        (b'{"stop_at": "\\u2603"}', 422, "stop_at"),
        (b'{"stream": "yes"}', 422, "stream"),
        (b'{"lenght": 5}', 422, "lenght"),
    ],
)
def test_bad_requests_name_the_field(server, raw, status, field):
    got, text, _ = request(server, "POST", "/v1/generate", raw=raw)
    error = json.loads(text)["error"]
    assert (got, error["field"]) == (status, field)
    assert error["message"] and "\n" not in error["message"]


def test_bad_score_requests_and_a_body_too_big(server):
    got, text, _ = request(server, "POST", "/v1/score", {"text": "\u2603\u2603"})
    assert (got, json.loads(text)["error"]["field"]) == (422, "text")
    got, text, _ = request(server, "POST", "/v1/score", raw=b'{"text": "' + b"a" * 2**21 + b'"}')
    assert got == 413 and "bytes" in json.loads(text)["error"]["message"]


def open_stream(port: int, length: int = 1_000_000) -> socket.socket:
    """A streaming request whose first text has arrived; its reader reads no more."""
    sock = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"seed": "T", "length": length}).encode()
    sock.sendall(
        b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )  # fmt: skip
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def wait_for(port: int, condition, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = health(port)
        if condition(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def test_a_client_that_hangs_up_stops_costing(server):
    before = health(server)
    sock = open_stream(server)
    assert wait_for(server, lambda h: h["active_streams"] == 1)["active_streams"] == 1
    sock.close()
    after = wait_for(server, lambda h: h["active_streams"] == 0)
    assert after["active_streams"] == 0
    assert after["streams_cancelled"] == before["streams_cancelled"] + 1
    chars = after["chars_generated"]
    time.sleep(0.3)
    assert health(server)["chars_generated"] == chars  # nothing generated for it any more


def test_a_full_queue_is_503_with_retry_after(server):
    socks = [open_stream(server) for _ in range(MAX_STREAMS)]
    # Queued streams have their status line only once they start: send, don't wait.
    queued = []
    for _ in range(MAX_QUEUE):
        sock = socket.create_connection(("127.0.0.1", server))
        body = b'{"length": 1000000}'
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\n" + body)
        queued.append(sock)
    wait_for(server, lambda h: h["queued_streams"] == MAX_QUEUE)
    status, text, response = request(server, "POST", "/v1/generate", {"length": 5})
    assert status == 503 and response.getheader("Retry-After") == "1"
    assert "busy" in json.loads(text)["error"]["message"]
    for sock in socks + queued:
        sock.close()
    info = wait_for(server, lambda h: h["active_streams"] == 0 and h["queued_streams"] == 0)
    assert (info["active_streams"], info["queued_streams"]) == (0, 0)
    assert request(server, "POST", "/v1/generate", {"length": 5})[0] == 200


def test_sigterm_cuts_open_streams_and_exits_soon(checkpoint):
    proc, port = start(checkpoint, "--host", "0.0.0.0", "--max-length", "1000000")
    try:
        sock = open_stream(port)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        proc.kill()  # never left running, whatever failed above
    # A graceful stop, then uvicorn ends the process by the signal, as its default would.
    assert time.monotonic() - t0 < 10 and proc.returncode == -signal.SIGTERM
    sock.settimeout(5)
    while sock.recv(65536):  # the stream ends (the server closed it), it does not hang
        pass
    stderr = proc.stderr.read()
    assert "anyone who can reach port" in stderr and "--host 127.0.0.1" in stderr
    assert "Finished server process" in stderr


def test_without_the_extra_the_error_names_it(checkpoint):
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.argv = ['charrnn', 'serve', "
        f"{checkpoint!r}]; from charrnn.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "pip install 'charrnn[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_the_engine_alone_batches_and_frees_rows(model):
    """No HTTP: unseeded streams share one batched step; a cancelled one leaves it."""
    engine = Engine(model, max_streams=8, max_queue=0, lanes=2)
    engine.room.lanes = lambda: 2  # whatever else the test machine is running
    engine.start()
    texts: dict[int, list[str]] = {i: [] for i in range(4)}
    done = threading.Semaphore(0)

    def sink(i):
        return lambda text, end: (texts[i].append(text), end and done.release())

    ids = [model.vocab.index["T"]]
    jobs = [Job("T", ids, SampleConfig(length=2000)) for _ in range(3)]
    jobs.append(Job("T", ids, SampleConfig(length=500, random_seed=5)))
    streams = [engine.submit(job, sink(i)) for i, job in enumerate(jobs)]
    assert [lane.rows for lane in engine.lanes] == [2, 2]  # each to the emptier lane
    streams[0].cancel()
    for _ in range(3):
        assert done.acquire(timeout=30)
    engine.close()
    stats = engine.snapshot()
    assert stats["cancelled"] == 1 and stats["finished"] == 3
    assert stats["steps"] < stats["chars"]  # rows advanced together
    assert "".join(texts[3]) == model.sample(seed="T", length=500, random_seed=5)
    assert len("".join(texts[1])) == 2001


def test_batched_rows_follow_the_model_as_the_batch_grows_and_shrinks(model):
    """Streams that share the batched step (5 rows, then 4, 3, 2, 1 as they end: padded,
    row by row, whole) draw what the model says: at a near-zero temperature, the argmax
    text of `charrnn sample -t 0`."""
    engine = Engine(model, max_streams=8, max_queue=8).start()
    seeds, lengths = ["T", "Th", "A", "W", "He"], [40, 70, 100, 130, 160]
    texts: dict[int, list[str]] = {i: [] for i in range(5)}
    done = threading.Semaphore(0)

    def sink(i):
        return lambda text, end: (texts[i].append(text), end and done.release())

    for i, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        ids = [model.vocab.index[c] for c in seed]
        engine.submit(Job(seed, ids, SampleConfig(length=length, temperature=1e-6)), sink(i))
    for _ in range(5):
        assert done.acquire(timeout=30)
    engine.close()
    for i, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        assert "".join(texts[i]) == model.sample(seed=seed, length=length, temperature=0)


def test_a_lane_that_dies_ends_every_stream_with_an_error(model):
    """A lane process killed mid-stream: its streams and the other lane's end with
    "error" (no client waits forever), and the engine says which lane."""
    engine = Engine(model, lanes=2)
    engine.room.lanes = lambda: 2  # whatever else the test machine is running
    engine.start()
    ends: list[str] = []
    ended = threading.Semaphore(0)

    def sink(text, end):
        if end:
            ends.append(end)
            ended.release()

    for _ in range(2):
        engine.submit(Job("T", [model.vocab.index["T"]], SampleConfig(length=1_000_000)), sink)
    assert sorted(lane.rows for lane in engine.lanes) == [1, 1]
    deadline = time.monotonic() + 30
    while engine.snapshot()["chars"] < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(engine.lanes[0].process.pid, signal.SIGKILL)
    assert ended.acquire(timeout=10) and ended.acquire(timeout=10)
    assert ends == ["error", "error"] and "lane 0 ended" in engine.error
    with pytest.raises(EngineBusy):
        engine.submit(Job("T", [model.vocab.index["T"]], SampleConfig(length=5)), sink)
    engine.close()


def test_an_engine_in_a_script_without_a_main_guard(checkpoint, tmp_path):
    """Lanes are started as plain subprocesses, so a script (or notebook) that builds an
    Engine at top level works: multiprocessing's spawn would run the script again."""
    script = tmp_path / "use_engine.py"
    script.write_text(
        "import threading, charrnn\n"
        "from charrnn.config import SampleConfig\n"
        "from charrnn.serve import Engine, Job\n"
        f"model = charrnn.load({checkpoint!r})\n"
        "engine = Engine(model, lanes=2).start()\n"
        "done, parts = threading.Event(), []\n"
        "sink = lambda text, end: (parts.append(text), end and done.set())\n"
        "engine.submit(Job('T', [model.vocab.index['T']], SampleConfig(length=50)), sink)\n"
        "assert done.wait(30)\n"
        "engine.close()\n"
        "print(len(''.join(parts)))\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "51" and "Traceback" not in result.stderr


def test_lanes_must_be_a_whole_number(checkpoint):
    result = run_cli("serve", checkpoint, "--lanes", "0")
    assert result.returncode == 2 and "--lanes must be a whole number >= 1" in result.stderr


def test_new_streams_use_only_the_cores_other_programs_leave(monkeypatch):
    """Room: from /proc/stat's busy time less the server's own, over the last look's span.
    Another program holding a core of two leaves one lane for new streams; when it stops,
    two again."""
    from charrnn.serve import engine as eng

    clock, busy, ours = [0.0], [0.0], [0.0]
    monkeypatch.setattr(eng.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(eng, "cpu_busy_seconds", lambda: busy[0])
    monkeypatch.setattr(eng, "cpu_seconds_of", lambda pid: ours[0])
    room = eng.Room(2, lambda: [1])
    room.cores = 2

    def after(seconds: float, others: float, mine: float) -> int:
        clock[0] += seconds
        busy[0] += (others + mine) * seconds
        ours[0] += mine * seconds
        room.look()
        return room.lanes()

    assert after(0, others=0.0, mine=0.0) == 2  # the first look has nothing to compare with
    assert after(2, others=0.1, mine=1.9) == 2  # the server itself using both cores
    assert after(2, others=1.0, mine=1.0) == 1  # another program holds a core
    assert after(2, others=0.0, mine=2.0) == 2  # and lets go of it
    assert after(2, others=2.0, mine=0.0) == 1  # never fewer than one
    one = eng.Room(1, lambda: [1])
    one.look()
    assert one.lanes() == 1


def test_busy_seconds_leave_out_idle_niced_and_stolen_time(monkeypatch):
    from charrnn.serve import engine as eng

    monkeypatch.setattr(eng.os, "sysconf", lambda name: 100)
    # user nice system idle iowait irq softirq steal
    line = "cpu  1000 5000 200 90000 300 10 20 4000 0 0"
    assert eng.cpu_busy_seconds(line) == (1000 + 200 + 10 + 20) / 100


def test_rows_and_counters_stay_right_through_many_joins_cancels_and_ends(model):
    """Streams of random lengths, stop texts and seeds come faster than rows free up,
    and 4 in 10 are cancelled (queued, running or already ended): when it is all over,
    no row, queue place or stream is left taken, and every stream is counted once."""
    import random

    from charrnn.serve.engine import wait_idle

    engine = Engine(model, max_streams=6, max_queue=4, lanes=2).start()
    rng, streams, refused, ends = random.Random(0), [], 0, []
    for _ in range(120):
        config = SampleConfig(
            length=rng.randint(1, 300),
            random_seed=rng.choice([None, None, 3]),
            stop_at=rng.choice([None, "\n"]),
        )
        try:
            job = Job("T", [model.vocab.index["T"]], config)
            streams.append(engine.submit(job, lambda text, end: end and ends.append(end)))
        except EngineBusy:
            refused += 1
        if rng.random() < 0.4 and streams:
            rng.choice(streams).cancel()
        time.sleep(rng.random() * 0.004)
    assert wait_idle(engine, 60)
    stats = engine.snapshot()
    engine.close()
    assert (stats["active"], stats["queued"], len(engine.streams)) == (0, 0, 0)
    assert [lane.rows for lane in engine.lanes] == [0, 0]
    never_started = len(streams) - stats["started"]
    assert stats["finished"] + stats["cancelled"] == stats["started"] + never_started
    assert len(ends) == stats["finished"] and refused + len(streams) == 120
