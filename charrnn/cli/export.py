"""`charrnn export`: a checkpoint as an ONNX step graph or a static web page."""

from __future__ import annotations

import os

import typer

from ..export import FORMATS, export
from .app import app, completer, examples
from .streams import err, guarded


@app.command(
    "export",
    epilog=examples(
        "charrnn export checkpoints/best.pt --format onnx --out model.onnx",
        "charrnn export checkpoints/best.pt --format web --out site/  # then open site/index.html",
    ),
)
def export_cmd(
    checkpoint: str = typer.Argument(..., help="The checkpoint to export (best.pt, last.pt)."),
    format: str = typer.Option(
        ...,
        "--format",
        "-f",
        metavar="[" + "|".join(FORMATS) + "]",
        autocompletion=completer(FORMATS),
        help="onnx: one recurrent step for any ONNX runtime; web: a page that generates in "
        "the browser.",
    ),
    out: str = typer.Option(..., "--out", "-o", help="The .onnx file, or the web page's folder."),
) -> None:
    """Use the model elsewhere: export one step as ONNX, or a static web page (see
    docs/elsewhere.md)."""
    written = guarded(lambda: export(checkpoint, format, out))
    size = sum(os.path.getsize(p) for p in written)
    where = written[0] if format == "onnx" else os.path.join(out, "index.html")
    err.print(f"wrote {where} ({len(written)} file(s), {size / 1e6:.2f} MB)", markup=False)
