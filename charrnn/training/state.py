"""The run's state: where it is (step, cursor, carried hidden state, history, best loss),
what of it goes into a checkpoint and back out, and the save itself.

The checkpoint is the plain dict described in checkpoint.py; its keys do not change here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from ..checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    commit_checkpoint,
    discard_temporary,
    write_temporary,
)
from ..config import TrainConfig
from ..corpus import Corpus
from ..errors import CheckpointError, OutputError, TrainingError
from ..model import Hidden, hidden_from_list, hidden_to_list
from ..rundir import RunDir
from .budget import Budget
from .prepare import Parts, rank_seed


@dataclass
class Progress:
    """Where the run is: what moves with every step and is saved with the weights."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # the next window of this epoch
    hidden: Hidden | None = None  # carried from window to window (this process's rows)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record a validation
    best_val: float | None = None
    last_val: float | None = None

    def fractional_epoch(self, steps_per_epoch: int) -> float:
        return self.epoch + self.window / steps_per_epoch


class RunState:
    """Saves the run into its folder and restores it from a checkpoint. Under torchrun
    every process calls collect() at the same step; rank 0 alone writes."""

    def __init__(
        self,
        parts: Parts,
        config: TrainConfig,
        corpus: Corpus,
        run_dir: RunDir,
        budget: Budget,
        lineage: list[dict[str, Any]],
        choice: dict[str, Any] | None = None,
    ):
        self.parts = parts
        self.config = config
        self.corpus = corpus
        self.run_dir = run_dir
        self.budget = budget  # its plan is saved: a resumed run keeps the same schedule
        self.lineage = lineage  # the --init-from checkpoints the weights came from
        self.choice = choice  # how charrnn chose the model's size (sizing.Choice.to_dict)
        self.progress = Progress()
        # What rank 0 saves: every process's rows of the hidden state and RNG states.
        self.collected: tuple[list[torch.Tensor] | None, list[dict[str, Any]]] | None = None
        self.save_took = 0.0  # seconds the last save took

    def restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self._restore(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"cannot resume: the checkpoint's training state is damaged ({e!s:.100})"
            ) from None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        parts, p = self.parts, self.progress
        parts.optimizer.load_state_dict(ckpt["optimizer_state"])
        p.step = int(ckpt["step"])
        p.epoch = int(ckpt["cursor"]["epoch"])
        p.window = int(ckpt["cursor"]["window"])
        dtype = parts.model.head.weight.dtype  # float32: bf16 states of old checkpoints widen
        p.hidden = self._my_rows(hidden_from_list(ckpt.get("hidden"), parts.device, dtype))
        p.history = list(ckpt.get("history") or [])
        self.choice = ckpt.get("model_choice")  # a resumed run keeps its model and the why
        p.best_val = ckpt.get("best_val_loss")
        # The newest row may hold only a training loss: take the newest validation.
        p.last_val = next((r["val_loss"] for r in reversed(p.history) if "val_loss" in r), None)
        old = ckpt.get("train_config", {})
        same_limits = all(
            old.get(k) == getattr(self.config, k) for k in ("max_steps", "epochs", "time_limit")
        )
        if same_limits and ckpt.get("plan_steps") is not None:
            self.budget.plan = int(ckpt["plan_steps"])  # continue the very same schedule
        if parts.average is not None:  # the weights themselves came back in prepare()
            parts.average.restore(ckpt["model_state"], ckpt["weight_average"])
        self._restore_rng(ckpt.get("rng") or {})

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        world = self.parts.world
        ranks = rng.get("ranks")
        if ranks and len(ranks) == world.size:
            rng = ranks[world.rank]  # the same processes again: each its own state
        elif world.rank > 0:  # another process count: fresh, distinct dropout draws
            torch.manual_seed(rank_seed(self.config.random_seed, world.rank, self.progress.step))
            rng = {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.parts.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][0], self.parts.device)

    def _my_rows(self, hidden: Hidden | None) -> Hidden | None:
        """This process's rows of the saved state of all streams (L, B, H)."""
        world = self.parts.world
        if hidden is None or world.size == 1:
            return hidden
        b = self.config.batch_size // world.size
        rows = slice(world.rank * b, (world.rank + 1) * b)
        if isinstance(hidden, tuple):
            return tuple(h[:, rows].contiguous() for h in hidden)
        return hidden[:, rows].contiguous()

    def _rng(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.parts.device.type == "cuda":
            rng["cuda"] = [torch.cuda.get_rng_state(self.parts.device)]
        return rng

    def collect(self) -> None:
        """Before rank 0 saves (every process calls this at the same step): the hidden
        state of all streams and every process's RNG state, gathered to rank 0."""
        world = self.parts.world
        if not world.launched:
            return
        parts = hidden_to_list(self.progress.hidden)  # None at an epoch's start: everywhere
        gathered = None if parts is None else [world.gather_rows(h) for h in parts]
        self.collected = (gathered, world.gather(_to_cpu(self._rng())))

    def checkpoint(self) -> dict[str, Any]:
        """The plain dict a checkpoint file holds."""
        parts, p = self.parts, self.progress
        rng = self._rng()
        hidden = hidden_to_list(p.hidden)
        if self.collected is not None:  # several processes: all of them, rank 0's first
            hidden, ranks = self.collected
            rng = {**ranks[0], "ranks": ranks}
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "charrnn_version": __version__,
            "model_config": parts.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "vocab": self.corpus.vocab.to_list(),
            **self._weights(),
            "optimizer_state": _to_cpu(parts.optimizer.state_dict()),
            "step": p.step,
            "epoch": p.epoch,
            "cursor": {"epoch": p.epoch, "window": p.window},
            "hidden": hidden,
            "precision": parts.precision,  # what these weights last trained in
            "rng": rng,
            "plan_steps": self.budget.plan,
            "best_val_loss": p.best_val,
            "history": list(p.history),
            "lineage": list(self.lineage),
            "model_choice": self.choice,
            "corpus": {
                **self.corpus.record(),
                "first_char": self.corpus.vocab.chars[int(self.corpus.train[0])],
            },
        }

    def _weights(self) -> dict[str, Any]:
        """model_state: the weights to use. With --ema that is the average, and the weights
        Adam is moving go beside it, for --resume."""
        trained = {k: v.detach().cpu() for k, v in self.parts.model.state_dict().items()}
        average = self.parts.average
        if average is None:
            return {"model_state": trained}
        return {
            "model_state": average.averaged(trained),
            "training_weights": trained,
            "weight_average": average.state(),
        }

    def save(self, also_best: bool) -> None:
        """Write last.pt (and best.pt): rank 0 only, since collect() gave it the others'
        state. The first save of a --force run is what clears the previous run's files."""
        if not self.parts.world.is_main:
            return
        if not all(torch.isfinite(p).all() for p in self.parts.model.parameters()):
            # Never replace a good checkpoint with a broken model.
            raise TrainingError(
                f"the weights became non-finite by step {self.progress.step}; nothing was "
                f"saved over {self.run_dir.last}: lower --lr (now {self.config.lr:g}) or "
                "--grad-clip"
            )
        began = time.perf_counter()
        state = self.checkpoint()
        targets = [self.run_dir.best, self.run_dir.last] if also_best else [self.run_dir.last]
        # Every file is written in full before any is renamed into place, and the previous
        # run's files (--force) are cleared only then: a save that fails changes nothing.
        written: list[tuple[str, str]] = []
        try:
            for path in targets:
                written.append((write_temporary(state, path), path))
            self.run_dir.clear_previous_run()
            while written:
                tmp, path = written.pop(0)
                commit_checkpoint(tmp, path)
        except OSError as e:
            raise OutputError(
                f"could not save {path} ({e.strerror or e}); the previous checkpoint is "
                "intact: free some space or fix the folder, then --resume"
            ) from None
        finally:
            for tmp, _ in written:
                discard_temporary(tmp)
            self.save_took = time.perf_counter() - began
        self.run_dir.write_pending()  # training-loss lines held until this run's first save

    def share(self) -> None:
        """Under torchrun, every process takes what rank 0 measured (its validations)."""
        p, world = self.progress, self.parts.world
        p.best_val, p.last_val, p.history = world.broadcast((p.best_val, p.last_val, p.history))


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
