"""The HTTP layer: FastAPI routes over the engine. POST /v1/generate streams the seed and
then the text as it is drawn (or, with "stream": false, answers one JSON body); POST
/v1/score scores a text as `charrnn eval` does; GET /health says what the engine is doing;
GET / is a playground page. FastAPI serves /openapi.json and /docs itself."""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from .engine import Engine, EngineBusy, Job, Stream, call_sinks
from .requests import (
    GENERATE_FIELDS,
    SCORE_FIELDS,
    BadRequest,
    Limits,
    generate_job,
    parse_body,
    score_text,
)

RETRY_AFTER_SECONDS = 1


def build_app(model: Any, limits: Limits) -> FastAPI:
    """The app for a loaded charrnn.api.Model; the engine starts with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        app.state.engine = Engine(
            model,
            limits.max_streams,
            limits.max_queue,
            lanes=limits.lanes,
            deliver=lambda items: loop.call_soon_threadsafe(call_sinks, items),
        ).start()
        yield
        app.state.engine.close()

    app = FastAPI(title="charrnn", summary=f"Text from {model.path}", lifespan=lifespan)
    app.state.model, app.state.limits = model, limits

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.post("/v1/generate", openapi_extra=_schema(GENERATE_FIELDS), response_model=None)
    async def generate(request: Request) -> StreamingResponse | JSONResponse:
        """The seed, then `length` generated characters, streamed as plain text as they
        are drawn; with "stream": false, one JSON object when the text is done."""
        return await _generate(request, app.state.engine, model, limits)

    @app.post("/v1/score", openapi_extra=_schema(SCORE_FIELDS))
    async def score(request: Request) -> dict[str, Any]:
        """Mean loss per character of predicting each character of "text" from those before
        it, from a zero state: `charrnn eval`'s numbers."""
        data = parse_body(await _read_body(request, limits), SCORE_FIELDS)
        return await asyncio.to_thread(score_text, data, model)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, the model, and the engine's counters (active streams and more)."""
        return _health(app.state.engine, model, limits)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return resources.files(__package__).joinpath("playground.html").read_text("utf-8")

    return app


async def _generate(
    request: Request, engine: Engine, model: Any, limits: Limits
) -> StreamingResponse | JSONResponse:
    data = parse_body(await _read_body(request, limits), GENERATE_FIELDS)
    job, streaming = generate_job(data, model, limits)
    queue: asyncio.Queue = asyncio.Queue()
    try:
        stream = engine.submit(job, lambda *piece: queue.put_nowait(piece))
    except EngineBusy as e:
        return JSONResponse(
            BadRequest(503, f"busy: {e}; retry shortly").body(),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if streaming:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            _pieces(stream, queue), media_type="text/plain; charset=utf-8", headers=headers
        )
    return JSONResponse(await _whole(request, job, stream, queue))


def _health(engine: Engine, model: Any, limits: Limits) -> dict[str, Any]:
    stats = engine.snapshot()
    return {
        "status": {None: "ok", "shutdown": "shutting_down"}.get(engine.closing, "error"),
        **({"error": engine.error} if engine.error else {}),
        "model": repr(model),
        "active_streams": stats["active"],
        "queued_streams": stats["queued"],
        "streams_started": stats["started"],
        "streams_finished": stats["finished"],
        "streams_cancelled": stats["cancelled"],  # their client hung up
        "chars_generated": stats["chars"],
        "steps": stats["steps"],  # batched steps: fewer than chars when streams share them
        "lanes": len(engine.lanes),  # processes stepping streams side by side
        "limits": vars(limits),
    }


async def _read_body(request: Request, limits: Limits) -> bytes:
    too_big = BadRequest(413, f"the body is over {limits.max_body_bytes:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise too_big
    return bytes(body)


async def _pieces(stream: Stream, queue: asyncio.Queue):
    """The stream's text as it comes; everything waiting is sent in one piece. Cancelled
    (the client hung up) or done, the stream leaves the engine."""
    try:
        while True:
            text, end = await queue.get()
            while not queue.empty() and not end:
                more, end = queue.get_nowait()
                text += more
            if text:
                yield text
            if end:
                return
    finally:
        stream.cancel()


async def _whole(request: Request, job: Job, stream: Stream, queue: asyncio.Queue) -> dict:
    parts: list[str] = []
    end = None
    try:
        while end is None:
            try:
                text, end = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return {}
                continue
            parts.append(text)
    finally:
        stream.cancel()
    text = "".join(parts)
    return {
        "text": text,
        "seed": job.seed,
        "generated": text[len(job.seed) :],
        "num_generated": len(text) - len(job.seed),
        "finish_reason": end,
    }


def _schema(fields: dict[str, tuple]) -> dict[str, Any]:
    """The request body's JSON schema for the OpenAPI docs (the checks are requests.py's)."""
    kinds = {"a string": "string", "an integer": "integer", "a number": "number"}
    properties = {
        name: {
            "type": [kinds.get(word, "boolean"), "null"] if nullable else kinds.get(word, "boolean")
        }
        for name, (_, word, nullable) in fields.items()
    }
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
