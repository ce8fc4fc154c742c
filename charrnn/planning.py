"""`charrnn.plan` and `charrnn train --dry-run`: the model a run would train, its speed
here and its budget, without training (charrnn/sizing.py chooses; training/choose.py
times)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import pycall, sizing
from .api import _open_corpus, _prepare
from .config import TrainConfig
from .distributed import World
from .request import TRAIN_OPTIONS, check_request
from .sources import resolve as resolve_sources
from .training import Notice
from .training.choose import choose_for_run


def python_plan(
    corpus: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    encoding: str = "utf-8",
    cache_dir: str | os.PathLike[str] | None = None,
    on_event: Callable[[Any], None] | None = None,
    **options: Any,
) -> sizing.Choice:
    """`charrnn.plan`: what `charrnn train --dry-run` reports, for charrnn.train's
    arguments: the model a new run would train (charrnn's choice, or the size named), its
    speed here, the epochs in its budget and the loss to expect, as a sizing.Choice.
    Trains nothing; writes nothing but the corpus's id cache."""
    with pycall.python_terms():
        paths = pycall.corpus_paths(corpus)
        cache_dir = None if cache_dir is None else pycall.as_path("cache_dir", cache_dir)
        encoding = pycall.as_text("encoding", encoding)
        return plan(paths, encoding, cache_dir, on_event, options)


def plan(
    corpus: list[str],
    encoding: str,
    cache_dir: str | None,
    on_event: Callable[[Any], None] | None,
    options: dict[str, Any],
) -> sizing.Choice:
    """What `charrnn train --dry-run` runs (python_plan in the CLI's terms)."""
    started = time.perf_counter()
    world = World()
    given, encoding, paths = check_request(corpus, False, False, None, encoding, options, world)
    emit = on_event or (lambda event: None)
    sources = resolve_sources(paths, encoding)
    for notice in sources.notices:
        emit(Notice(notice))
    config = TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_OPTIONS})
    prepared = _prepare(world, sources, encoding, cache_dir, emit)
    data = _open_corpus(prepared, sources.name, config, None)
    return choose_for_run(given, config, data, world, started)
