"""The bodies of the HTTP requests, checked: JSON, the fields and their types, then the
values by the same checks `charrnn sample` and `charrnn eval` make (SampleConfig, the seed
and stop text against the vocabulary), each error naming its field."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .. import pycall
from ..config import SampleConfig
from ..errors import CharRNNError, UsageError
from ..sample import check_seed, check_stop
from .engine import Job

_SAMPLE = SampleConfig()


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_length: int = 20_000  # characters generated per request
    max_seed_chars: int = 10_000  # a longer prompt would hold up every stream while it feeds
    max_body_bytes: int = 1 << 20  # a request body, and so a text to score
    max_streams: int = 64  # rows of the batched step
    max_queue: int = 64  # accepted requests waiting for a row; more get 503
    lanes: int | None = None  # processes stepping streams; None: one per core (engine.py)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is None and name == "lanes":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a whole number >= 1 (got {value!r})", name)


class BadRequest(Exception):
    """A request refused: the HTTP status, the field at fault (None: the whole body)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "field": self.field}}


_NUMBER = (int, float)
# field -> (accepted types, a word for them, may be null)
GENERATE_FIELDS = {
    "seed": ((str,), "a string", True),
    "length": ((int,), "an integer", False),
    "temperature": (_NUMBER, "a number", False),
    "top_k": ((int,), "an integer", True),
    "top_p": (_NUMBER, "a number", True),
    "stop_at": ((str,), "a string", True),
    "random_seed": ((int,), "an integer", True),
    "stream": ((bool,), "true or false", False),
}
SCORE_FIELDS = {"text": ((str,), "a string", False)}


def parse_body(raw: bytes, fields: dict[str, tuple]) -> dict[str, Any]:
    """A JSON object with only `fields`, each of its type (a bool is not a number)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the body is not JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest(400, f"the body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(
            422, f"unknown field(s) {', '.join(unknown)}: known are {', '.join(fields)}", unknown[0]
        )
    for name, value in data.items():
        types, word, nullable = fields[name]
        if value is None and nullable:
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise BadRequest(422, f"{name} must be {word} (got {json.dumps(value)[:40]})", name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(422, f"{name} must be a finite number", name)
    return data


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def generate_job(data: dict[str, Any], model: Any, limits: Limits) -> tuple[Job, bool]:
    """The Job of a POST /v1/generate body, and whether to stream it."""
    length = data.get("length", _SAMPLE.length)
    if not 1 <= length <= limits.max_length:
        raise BadRequest(
            422,
            f"length must be from 1 to {limits.max_length:,} on this server (got {length})",
            "length",
        )
    seed = data.get("seed")
    seed = model.default_seed if seed is None else seed
    if len(seed) > limits.max_seed_chars:
        raise BadRequest(
            422, f"seed has {len(seed):,} characters; at most {limits.max_seed_chars:,}", "seed"
        )
    try:
        with pycall.python_terms():  # errors say top_p=, not --top-p
            config = SampleConfig(
                length=length,
                temperature=data.get("temperature", _SAMPLE.temperature),
                top_k=data.get("top_k"),
                top_p=data.get("top_p"),
                random_seed=data.get("random_seed"),
                stop_at=data.get("stop_at"),
            )
            seed_ids = _checked(lambda: check_seed(seed, model.vocab), "seed")
            _checked(lambda: check_stop(config.stop_at, model.vocab), "stop_at")
    except UsageError as e:
        raise BadRequest(422, _plain(str(e)), e.field) from None
    return Job(seed, seed_ids, config), data.get("stream", True)


def _checked(check, field: str):
    try:
        return check()
    except UsageError as e:
        raise UsageError(str(e), field) from None


def _plain(message: str) -> str:
    """`top_p= must be ...` as a JSON client reads it: `top_p must be ...`."""
    return message.replace("= ", " ", 1) if "= " in message.split(" ")[0] + " " else message


def score_text(data: dict[str, Any], model: Any) -> dict[str, Any]:
    """POST /v1/score: `charrnn eval`'s numbers for the posted text."""
    text = data.get("text")
    if text is None:
        raise BadRequest(422, 'text is missing: send {"text": "..."}', "text")
    try:
        loss = model.score(text, name="text")
    except CharRNNError as e:
        raise BadRequest(422, str(e), "text") from None
    return {
        "num_chars": len(text),
        "num_predicted": len(text) - 1,
        "loss_nats": loss,
        "bits_per_char": loss / math.log(2),
    }
