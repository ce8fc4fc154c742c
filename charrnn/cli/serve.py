"""`charrnn serve`: a checkpoint behind HTTP (the optional extra charrnn[serve])."""

from __future__ import annotations

import typer

from .. import api
from ..serve import Limits
from ..serve.server import load_framework, serve
from .app import app, examples, field_default
from .streams import printing, warn

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command(
    "serve",
    epilog=examples(
        "charrnn serve checkpoints/best.pt",
        'curl -N localhost:8000/v1/generate -d \'{"seed": "ROMEO:", "length": 300}\'',
    ),
)
def serve_cmd(
    checkpoint: str = typer.Argument(..., help="A checkpoint file (best.pt, last.pt)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 is everyone."),
    port: int = typer.Option(8000, help="TCP port."),
    max_streams: int = typer.Option(
        field_default(Limits, "max_streams"), help="Streams generated together, one row each."
    ),
    max_queue: int = typer.Option(
        field_default(Limits, "max_queue"), help="Requests waiting for a row; more get 503."
    ),
    max_length: int = typer.Option(
        field_default(Limits, "max_length"), help="Most characters one request may ask for."
    ),
    lanes: int | None = typer.Option(
        field_default(Limits, "lanes"),
        help="Processes stepping streams side by side (default: one per core, at most 4).",
        show_default=False,
    ),
) -> None:
    """Serve a model over HTTP: POST /v1/generate (streamed), /v1/score, GET /health, GET /."""
    printing(lambda: _serve(checkpoint, host, port, max_streams, max_queue, max_length, lanes))


def _serve(
    checkpoint: str,
    host: str,
    port: int,
    max_streams: int,
    max_queue: int,
    max_length: int,
    lanes: int | None,
) -> None:
    limits = Limits(
        max_length=max_length, max_streams=max_streams, max_queue=max_queue, lanes=lanes
    )
    load_framework()  # before the model loads: a missing extra is said at once
    model = api.load(checkpoint)
    if host not in LOCAL_HOSTS:
        warn(
            f"--host {host}: anyone who can reach port {port} on this machine can use the "
            "model (there is no authentication); use --host 127.0.0.1 to keep it local"
        )
    serve(model, host, port, limits)
