"""`charrnn serve`: a model behind HTTP, streams batched together.

engine.py is the continuous-batching engine (no HTTP: usable and testable alone), and
lane.py the processes that step its streams;
requests.py checks request bodies; http.py is the FastAPI app; server.py runs it on
uvicorn. FastAPI and uvicorn are the optional extra `charrnn[serve]`: only http.py and
server.py import them, and server.load_framework() names the extra when they are missing.
"""

from .engine import Engine, EngineBusy, Job, Stream
from .requests import BadRequest, Limits

__all__ = ["BadRequest", "Engine", "EngineBusy", "Job", "Limits", "Stream"]
