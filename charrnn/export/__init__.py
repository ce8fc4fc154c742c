"""Use a trained model elsewhere: one recurrent step as an ONNX graph (onnx.py), or a
static web page that generates text in the browser (web.py).

`export(checkpoint, format, out)` is what `charrnn export` calls.
"""

from __future__ import annotations

import json
import os

from .. import __version__
from ..api import load
from ..errors import OutputError, UsageError
from . import onnx, web

FORMATS = ("onnx", "web")


def export(checkpoint: str, format: str, out: str) -> list[str]:
    """Export the checkpoint at `checkpoint` as `format` ("onnx" or "web") to `out` (a file
    for onnx, a folder for web); returns the paths written."""
    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}: choose one of {', '.join(FORMATS)}")
    if not out:
        raise UsageError("--out must name where the export goes, e.g. --out model.onnx")
    if format == "onnx":
        onnx.require_onnx()  # before loading: the missing extra is the first thing to say
    model = load(checkpoint)
    module = model.module.float().eval()
    source = os.path.basename(checkpoint)
    if format == "web":
        return web.write_folder(module, model.vocab, model.default_seed, source, out)
    if os.path.isdir(out):
        raise OutputError(
            f"--out {out} is a folder; the ONNX export writes one file: give a file name"
        )
    metadata = {
        "config": json.dumps(module.config.to_dict()),
        "default_seed": model.default_seed,
        "charrnn_version": __version__,
        "source": source,
    }
    proto = onnx.build(module, model.vocab, metadata)
    try:
        onnx.write(proto, out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror}") from None
    return [out]
