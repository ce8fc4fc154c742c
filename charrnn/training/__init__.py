"""Training a char-RNN: the loop and the small units that decide for it.

    events.py      what a run reports: RunStarted, StepDone, Evaluated, Notice, TrainResult,
                   and StopRequest, the flag a signal handler sets
    evaluation.py  scoring held-out text (evaluate, evaluate_segments, val_segments)
    budget.py      when to stop: steps, epochs, wall time, the time plan, the learning rate
    prepare.py     device, precision, model (DDP under torchrun), Adam, this process's streams
    state.py       where the run is; what goes into a checkpoint and back out; the save
    evaluator.py   when to validate, what, keep-best, the evaluation sample
    loop.py        the loop: forward, loss, backward, clip, step, detach
    run.py         train(): assemble a run, loop, end it, report

Nothing here prints or knows about terminals: progress leaves through `on_event`.
"""

from .budget import learning_rate, limit_steps
from .choose import ModelChosen
from .evaluation import (
    LN2,
    MIN_VAL_STREAM,
    eval_chunk_len,
    evaluate,
    evaluate_segments,
    val_segments,
    val_streams,
)
from .events import Evaluated, Notice, RunStarted, StepDone, StopRequest, TrainResult
from .loop import MAX_BAD_STEPS, clip_gradients
from .run import train

__all__ = [
    "LN2",
    "MAX_BAD_STEPS",
    "MIN_VAL_STREAM",
    "Evaluated",
    "ModelChosen",
    "Notice",
    "RunStarted",
    "StepDone",
    "StopRequest",
    "TrainResult",
    "clip_gradients",
    "eval_chunk_len",
    "evaluate",
    "evaluate_segments",
    "learning_rate",
    "limit_steps",
    "train",
    "val_segments",
    "val_streams",
]
