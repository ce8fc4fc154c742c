"""The neurons page: one self-contained HTML file from a template shipped with charrnn.

The template (neurons.html, package data) holds all the HTML, CSS and script; Python
only injects the data, as one JSON blob. Nothing is fetched: no fonts, scripts or
images from anywhere, so the page opens from disk, offline.

Unit values travel compactly: per (layer, state) block, int8 codes of value / scale
(scale = the block's largest |value|), base64-encoded; the script decodes them.
"""

from __future__ import annotations

import base64
import json
from importlib import resources

import numpy as np

from .neurons import Recording

TEMPLATE = "neurons.html"
PLACEHOLDER = "/*CHARRNN_DATA*/null"
PAGE_CHARS = 2000  # characters of text the page can colour (all units of h and c each)
PAGE_STATES = ("h", "c")  # the states a reader can pick on the page


def page_data(
    rec: Recording,
    ranked: dict[str, list[dict]],
    saturation: list[dict],
    title: str,
    page_chars: int = PAGE_CHARS,
) -> dict:
    n = min(len(rec.text), page_chars)
    blocks = []
    for (layer, state), values in rec.states.items():
        if state not in PAGE_STATES:
            continue
        part = values[:n].astype(np.float32)  # (n, H)
        scale = float(np.abs(part).max()) or 1.0
        codes = np.round(part / scale * 127).astype(np.int8)
        blocks.append(
            {
                "layer": layer,
                "state": state,
                "scale": scale,
                # unit-major, so one unit's values are contiguous: codes[u * n + t]
                "codes": base64.b64encode(np.ascontiguousarray(codes.T).tobytes()).decode(),
            }
        )
    return {
        "title": title,
        "model": rec.kind,
        "num_layers": rec.num_layers,
        "hidden_size": rec.hidden_size,
        "text": rec.text[:n],
        "recorded_chars": len(rec.text),
        "blocks": blocks,
        "features": ranked,
        "saturation": saturation,
    }


def render_page(data: dict) -> str:
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    if PLACEHOLDER not in template:
        raise RuntimeError(f"the page template lacks its data placeholder {PLACEHOLDER}")
    # Inside <script>, "</" could end the element early; "<\/" means the same in JSON.
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return template.replace(PLACEHOLDER, blob)
