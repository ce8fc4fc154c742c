"""charrnn: a character-level RNN / LSTM / GRU text generator.

    import charrnn
    model = charrnn.load("checkpoints/best.pt")
    print(model.sample(seed="ROMEO:", length=200, random_seed=1))

`load`, `train` and `Model` come from charrnn.api, imported on first use so that
`import charrnn` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["Model", "__version__", "load", "train"]


def __getattr__(name: str):
    if name in ("Model", "load", "train"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")
