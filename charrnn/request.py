"""A train request, checked before anything is connected or read: the options typed (with
durations parsed and numbers made plain), the ones that contradict each other, and the
rules of --resume and --init-from for the model and training options. Used by api.py's
train, and by `charrnn train --nproc-per-node` before it starts any process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import (
    LIMIT_OPTIONS,
    RESUMABLE_OPTIONS,
    ModelConfig,
    TrainConfig,
    parse_duration,
    plain_value,
)
from .device import resolve_device, resolve_precision
from .distributed import World, check_batch
from .errors import UsageError
from .sources import check_encoding

# The model options a user gives (vocab_size comes from the corpus).
MODEL_OPTIONS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def check_request(
    corpus: str | list[str],
    resume: bool,
    force: bool,
    init_from: str | None,
    encoding: str,
    options: dict[str, Any],
    world: World,
) -> tuple[dict[str, Any], str, list[str]]:
    """The checks of a train request that need no file but the corpus's name: the options
    typed (given, with durations parsed), the encoding's name, the corpus paths. Run by
    `charrnn train --nproc-per-node` too, before it starts any process."""
    unknown = sorted(set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS))
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)} for charrnn.train()")
    if resume and force:
        raise UsageError("--resume and --force contradict each other: choose one")
    if resume and init_from is not None:
        raise UsageError(
            "--init-from starts a new run from a model's weights; --resume continues the run "
            "in --out: choose one"
        )
    encoding = check_encoding(encoding)  # before the folder is touched or locked
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(given.get("time_limit"), str):
        given["time_limit"] = parse_duration(given["time_limit"])
    # Plain int, float and str from here on (numpy's numbers too): the resumed and
    # --init-from runs compare and store them without building a config from all of them.
    for name, value in given.items():
        given[name] = plain_value(
            ModelConfig if name in MODEL_OPTIONS else TrainConfig, name, value
        )
    if not resume:  # validate options before anything is connected or read
        TrainConfig(**{k: v for k, v in given.items() if k in TRAIN_OPTIONS})
        if init_from is None:
            ModelConfig(**{k: v for k, v in given.items() if k in MODEL_OPTIONS}, vocab_size=2)
        check_batch(given.get("batch_size", TrainConfig.batch_size), world)
    device = resolve_device(given.get("device", TrainConfig.device))
    if "precision" in given or not resume:  # bf16 where there is none: refused up front
        resolve_precision(given.get("precision", TrainConfig.precision), device)
    paths = [corpus] if isinstance(corpus, str) else list(corpus)
    if world.launched and "-" in paths:
        raise UsageError(
            "CORPUS - (stdin) under torchrun: the processes cannot share one stdin; save the "
            "text to a file and give its path"
        )
    return given, encoding, paths


def model_options_from(config: ModelConfig, path: str, typed: dict[str, Any]) -> dict[str, Any]:
    """The model options of an --init-from run are the checkpoint's; one typed differently
    is refused, not silently ignored."""
    for name, value in typed.items():
        if value != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {value!r} differs from the model in {path} ({getattr(config, name)!r}): "
                "--init-from takes the model from the checkpoint; drop the option"
            )
    return {name: getattr(config, name) for name in MODEL_OPTIONS}


def resume_configs(
    model_config: ModelConfig, old: TrainConfig, given: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a resumed run: the checkpoint's, with only the options a resumed run
    may change; any other option that differs from the run's is refused."""
    for name, value in given.items():
        if name in RESUMABLE_OPTIONS:
            continue
        current = getattr(model_config, name, getattr(old, name, None))
        if value != current:
            flag = "--" + name.replace("_", "-")
            others = [
                f"--{o.replace('_', '-')}" for o in RESUMABLE_OPTIONS if o not in LIMIT_OPTIONS
            ]
            raise UsageError(
                f"{flag} cannot change on --resume (the run has {current!r}); only the limits, "
                f"{', '.join(others)} and --quiet can: drop it, or start over with --force"
            )
    changes = {k: given[k] for k in RESUMABLE_OPTIONS if k in given}
    if any(k in given for k in LIMIT_OPTIONS):  # new limits replace the old ones as a set
        for k in LIMIT_OPTIONS:
            changes.setdefault(k, None)
    return model_config, dataclasses.replace(old, **changes)
