"""A static web page that generates text with the model in the browser.

The folder holds index.html and page.js (the controls), charrnn.js (the recurrent step in
plain JavaScript, a few kilobytes) and model.js (the config, the vocabulary and the
float32 weights, base64 inside a script, so that the page also works opened straight
from disk, where a browser refuses to fetch files). Nothing is fetched from anywhere.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from importlib import resources
from typing import Any

import numpy as np

from ..errors import OutputError
from ..model import CharRNN
from ..vocab import Vocab

FORMAT = 1  # model.js's layout; bumped when the runtime reads it differently
STATIC = ("index.html", "page.js", "charrnn.js")


def web_tensors(model: CharRNN) -> dict[str, np.ndarray]:
    """The weights under the runtime's names, float32, row-major. With one-hot input the
    first layer's W_ih (G*H, V) is stored transposed as `table` (V, G*H), so that W_ih x_t
    is one contiguous row."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    tensors: dict[str, np.ndarray] = {}
    if model.embed is not None:
        tensors["embed"] = state.pop("embed.weight")  # (V, D): row v is E x_t for x_t = v
    else:
        tensors["table"] = state.pop("rnn.weight_ih_l0").T  # (V, G*H)
    for name, value in state.items():
        tensors[name.removeprefix("rnn.").replace(".", "_")] = value
    return {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}


def model_script(model: CharRNN, vocab: Vocab, default_seed: str, source: str) -> str:
    offsets: dict[str, Any] = {}
    blobs, offset = [], 0
    for name, value in web_tensors(model).items():
        offsets[name] = [offset, list(value.shape)]
        blobs.append(value.tobytes())
        offset += value.size
    body = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "vocab": vocab.chars,
        "default_seed": default_seed,
        "source": source,
        "tensors": offsets,
        "weights": base64.b64encode(b"".join(blobs)).decode("ascii"),
    }
    # ensure_ascii: any character of the vocabulary survives whatever the page's encoding
    return f"window.CHARRNN_MODEL = {json.dumps(body, ensure_ascii=True)};\n"


def write_folder(
    model: CharRNN, vocab: Vocab, default_seed: str, source: str, out: str
) -> list[str]:
    """Write the page into folder `out` (made if missing); returns the files written."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"--out {out} is a file; the web export writes a folder: give a new path")
    try:
        os.makedirs(out, exist_ok=True)
        written = []
        for name in STATIC:
            src = resources.files(__package__).joinpath("static", name)
            with resources.as_file(src) as path:
                shutil.copyfile(path, os.path.join(out, name))
            written.append(os.path.join(out, name))
        target = os.path.join(out, "model.js")
        with open(target, "w", encoding="ascii") as f:
            f.write(model_script(model, vocab, default_seed, source))
        written.append(target)
    except OSError as e:
        raise OutputError(f"cannot write the web export to {out}: {e.strerror}") from None
    return written
