"""charrnn: a character-level RNN / LSTM / GRU text generator.

    import charrnn
    model = charrnn.load("checkpoints/best.pt")
    print(model.sample(seed="ROMEO:", length=200, random_seed=1))

`load`, `train` and `Model` come from charrnn.api, imported on first use so that
`import charrnn` stays cheap. `charrnn.train` is `api.python_train`: `api.train` is what
`charrnn train` runs, with the CLI's arguments and its wording.
"""

from .errors import TrainingInterrupted

__version__ = "0.1.0"

__all__ = [
    "DynamicConfig", "Model", "TrainingInterrupted", "__version__", "load", "plan", "train",
]  # fmt: skip

_FROM_API = {
    "DynamicConfig": "DynamicConfig",
    "Model": "Model",
    "load": "load",
    "train": "python_train",
}


def __getattr__(name: str):
    if name == "plan":
        from .planning import python_plan

        return python_plan
    if name in _FROM_API:
        from . import api

        return getattr(api, _FROM_API[name])
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that a REPL's tab completion offers charrnn.load and the rest.
    return sorted(set(globals()) | set(__all__))
