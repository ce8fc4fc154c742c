"""Run the app on uvicorn. SIGTERM or Ctrl-C: every open stream is cut at once (it ends
with the text it has), connections close, and the process exits within seconds."""

from __future__ import annotations

from typing import Any

from ..errors import MissingExtraError
from .lane import one_thread
from .requests import Limits

SERVE_EXTRA = "pip install 'charrnn[serve]'"
# Seconds uvicorn waits for open connections after a stop signal before closing them.
GRACE_SECONDS = 3.0


def load_framework() -> Any:
    """uvicorn, once FastAPI is known to import too; MissingExtraError names the extra."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise MissingExtraError(
            f"charrnn serve needs FastAPI and uvicorn ({e.name} is missing): {SERVE_EXTRA}"
        ) from None
    return uvicorn


def serve(model: Any, host: str, port: int, limits: Limits, log_level: str = "info") -> None:
    """Serve `model` (a charrnn.api.Model) until SIGTERM or SIGINT."""
    uvicorn = load_framework()
    from .http import build_app

    one_thread()
    app = build_app(model, limits)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            engine = getattr(app.state, "engine", None)
            if engine is not None:
                engine.close()  # every stream ends now, so its connection can close
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACE_SECONDS,
        lifespan="on",
    )
    Server(config).run()
