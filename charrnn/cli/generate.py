"""`charrnn sample` and `eval`: a checkpoint's text and its score on a text. Their results
are data, on stdout (`info`, what a checkpoint holds, is in info.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

import typer

from .. import api
from ..config import SampleConfig
from ..corpus import read_text
from ..device import resolve_device
from ..dynamic import DynamicConfig
from ..errors import CorpusError, UsageError
from ..sources import check_encoding, read_all
from ..training import LN2
from ..vocab import Vocab, describe_chars
from .app import DEFAULT_CHECKPOINT, DEVICE_METAVAR, app, complete_device, examples, field_default
from .streams import Stdout, printing, warn

# ------------------------------------------------------------------------ sample


@app.command(
    "sample",
    epilog=examples(
        'charrnn sample -c checkpoints/best.pt --seed "ROMEO:" --length 300',
        "charrnn sample --length 0 --temperature 0.6 | head -c 100000 > more.txt",
        "cat prompt.txt | charrnn sample --seed-file - --stop-at '\\n\\n'",
    ),
)
def sample_cmd(
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, "--checkpoint", "-c"),
    seed: str = typer.Option(
        None,
        "--seed",
        "-s",
        help="Text to start from, printed first (default: the training text's first character).",
    ),
    seed_file: str = typer.Option(
        None, help="Read the seed from this file (- for stdin): a long prompt, printed first."
    ),
    encoding: str = typer.Option("utf-8", help="Text encoding of --seed-file."),
    length: int = typer.Option(
        field_default(SampleConfig, "length"),
        "--length",
        "-n",
        help="Characters after the seed; 0 streams without end (until the reader stops).",
    ),
    temperature: float = typer.Option(
        field_default(SampleConfig, "temperature"),
        "--temperature",
        "-t",
        help="Lower is safer, higher is wilder; 0 always takes the most likely character.",
    ),
    top_k: int = typer.Option(None, help="Draw only from the k most likely characters."),
    top_p: float = typer.Option(
        None, help="Draw only from the smallest set of characters with this much probability."
    ),
    stop_at: str = typer.Option(
        None, help="End each sample right after generating this text (escapes like \\n work)."
    ),
    num_samples: int = typer.Option(
        field_default(SampleConfig, "num_samples"), help="Independent samples, generated together."
    ),
    separator: str = typer.Option(
        "\\n\\n", help="Printed between samples (escapes like \\n are understood)."
    ),
    random_seed: int = typer.Option(None, help="Seed for a repeatable sample."),
    device: str = typer.Option(
        "cpu",
        metavar=DEVICE_METAVAR,
        autocompletion=complete_device,
        help="cpu (fastest for sampling; see docs/performance.md), cuda, cuda:N, mps or auto.",
    ),
) -> None:
    """Generate text from a checkpoint and stream it to stdout."""
    printing(
        lambda: _sample(
            checkpoint,
            None if seed is None else utf8_text(seed),
            seed_file,
            encoding,
            utf8_text(separator),
            device,
            SampleConfig(
                length=length,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                num_samples=num_samples,
                random_seed=random_seed,
                stop_at=None if stop_at is None else _unescape(utf8_text(stop_at), "--stop-at"),
            ),
        )
    )


def utf8_text(arg: str) -> str:
    """A text option (--seed, --stop-at, --separator) as the UTF-8 its bytes almost always
    are: under a C/POSIX locale with PYTHONUTF8=0, Python decodes `--seed é` to the escapes
    '\\udcc3\\udca9'. Bytes that are not UTF-8 stay escaped (and are refused later). Paths
    are left alone: the file system's encoding is the locale's."""
    if not any("\udc80" <= c <= "\udcff" for c in arg):
        return arg
    try:
        return os.fsencode(arg).decode("utf-8")
    except (UnicodeError, ValueError):
        return arg


# One backslash and what follows it (a pair of backslashes is one match, so \\q is fine).
_ESCAPE = re.compile(r"\\(?P<char>.?)", re.DOTALL)
# What Python's string escapes start with: \\ \' \" \a \b \f \n \r \t \v \0-7 \x \u \U \N.
_ESCAPE_CHARS = frozenset("\\'\"abfnrtv01234567xuUN\n")


def _unescape(typed: str, flag: str) -> str:
    """Backslash escapes (\\n, \\t, \\u2014) become their characters; every other character
    stays exactly as typed, '—' and 'é' included."""
    for match in _ESCAPE.finditer(typed):
        if match["char"] and match["char"] not in _ESCAPE_CHARS:
            raise UsageError(
                f"{flag} {typed!r} has an unknown backslash escape \\{match['char']}: write "
                f"\\\\{match['char']} for a backslash and {match['char']!r}, or use \\n, \\t, "
                "\\xHH or \\uXXXX"
            )
    # latin-1 + backslashreplace turns the non-latin-1 characters into \\uXXXX escapes, which
    # unicode_escape (it reads its bytes as latin-1) turns back: nothing is double-decoded.
    try:
        text = typed.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        raise UsageError(
            f"{flag} {typed!r} has a broken backslash escape: write \\n, \\t or \\\\"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{flag} {typed!r} holds a lone surrogate (half of a UTF-16 pair), which "
            "cannot be printed: give a real character"
        ) from None
    return text


def _sample(
    checkpoint: str,
    seed: str | None,
    seed_file: str | None,
    encoding: str,
    separator: str,
    device_name: str,
    config: SampleConfig,
) -> None:
    if seed is not None and seed_file is not None:
        raise UsageError("--seed and --seed-file both give the seed: choose one")
    device = "cpu" if device_name == "auto" else device_name  # the CPU samples fastest (docs)
    resolve_device(device)
    check_encoding(encoding)  # a usage error even without --seed-file
    separator = _unescape(separator, "--separator")
    out = Stdout()
    model = api.load(checkpoint, device)
    if seed_file is not None:
        seed = _read_seed(seed_file, encoding, model.vocab)
    current = 0
    unflushed = 0
    last_flush = time.monotonic()
    for index, text in model.generate(config, seed):
        if index != current:
            out.write(separator)
            current = index
        out.write(text)
        unflushed += len(text)
        # Stream: flush at line ends and a few times a second, not per character.
        now = time.monotonic()
        if text.endswith("\n") or unflushed >= 4096 or now - last_flush > 0.05:
            out.flush()
            unflushed = 0
            last_flush = now
    out.write("\n")
    out.flush()


def _read_seed(path: str, encoding: str, vocab: Vocab) -> str:
    """The whole text of a --seed-file (or of stdin for -) is the seed; every character must
    be in the vocabulary, since the model has no input for any other."""
    name = "<stdin>" if path == "-" else path
    text, warnings = read_all(path, encoding, role="--seed-file")  # a corpus's own checks
    for w in warnings:
        warn(w)
    if not text:
        raise CorpusError(f"--seed-file {name} is empty: give it the text to start from")
    missing = vocab.missing(text)
    if missing:
        raise CorpusError(
            f"--seed-file {name} has characters the model never saw: {describe_chars(missing)}; "
            "remove them, or use a model trained on text that has them"
        )
    return text


# -------------------------------------------------------------------- eval, info


@app.command(
    "eval",
    epilog=examples(
        "tail -c 111539 corpora/tinyshakespeare.txt > held_out.txt",
        "charrnn eval --checkpoint checkpoints/best.pt held_out.txt",
        "charrnn sample -n 5000 | charrnn eval - --json",
        "charrnn eval held_out.txt --dynamic",
    ),
)
def eval_cmd(
    file: str = typer.Argument(..., help="Text to score, or - for stdin."),
    checkpoint: str = typer.Option(DEFAULT_CHECKPOINT, "--checkpoint", "-c"),
    encoding: str = typer.Option("utf-8", help="Text encoding of FILE."),
    device: str = typer.Option(
        "auto",
        metavar=DEVICE_METAVAR,
        autocompletion=complete_device,
        help="auto, cpu, cuda, cuda:N or mps.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    dynamic: bool = typer.Option(
        False,
        "--dynamic",
        help="Adapt to the text while scoring it: each segment is scored, then learned from "
        "(slower; the checkpoint is not changed). See docs/dynamic-evaluation.md.",
    ),
    dynamic_lr: float = typer.Option(
        None,
        help=f"Step size of --dynamic (default {field_default(DynamicConfig, 'lr')}).",
        show_default=False,
    ),
    dynamic_decay: float = typer.Option(
        None,
        help="Fraction of the way back to the trained weights per --dynamic step "
        f"(default {field_default(DynamicConfig, 'decay')}).",
        show_default=False,
    ),
    dynamic_segment: int = typer.Option(
        None,
        help="Characters scored between two --dynamic steps "
        f"(default {field_default(DynamicConfig, 'segment_len')}).",
        show_default=False,
    ),
) -> None:
    """Score a text: mean loss per character, in nats and bits."""
    tuning = {"lr": dynamic_lr, "decay": dynamic_decay, "segment_len": dynamic_segment}
    printing(lambda: _eval(file, checkpoint, encoding, device, as_json, dynamic, tuning))


def _eval(
    file: str,
    checkpoint: str,
    encoding: str,
    device_name: str,
    as_json: bool,
    dynamic: bool,
    tuning: dict[str, Any],
) -> None:
    given = {k: v for k, v in tuning.items() if v is not None}
    if given and not dynamic:
        flags = ", ".join("--dynamic-" + ("segment" if k == "segment_len" else k) for k in given)
        verb = "takes" if len(given) == 1 else "take"
        raise UsageError(f"{flags} {verb} effect only with --dynamic: add --dynamic")
    config = DynamicConfig(**given) if dynamic else None  # checked before the model loads
    resolve_device(device_name)
    out = Stdout()
    model = api.load(checkpoint, device_name)
    text = read_text(file, encoding, role="text")
    for w in text.warnings:
        warn(w)
    began = time.perf_counter()
    loss = model.score(text.text, name=text.name, dynamic=config or False)
    result = {
        "checkpoint": checkpoint,
        "file": text.name,
        "num_chars": len(text.text),
        "num_predicted": len(text.text) - 1,  # every character but the first
        "loss_nats": loss,
        "bits_per_char": loss / LN2,
        "dynamic": dataclasses.asdict(config) if config else None,
        "seconds": time.perf_counter() - began,
    }
    if as_json:
        out.print(json.dumps(result))
    else:
        how = (
            f" (dynamic: lr {config.lr:g}, decay {config.decay:g}, segments of "
            f"{config.segment_len})"
            if config
            else ""
        )
        out.print(
            f"{loss:.4f} nats/char ({loss / LN2:.4f} bits/char) over {result['num_predicted']:,} "
            f"predicted characters of {text.name}{how}"
        )
