"""`charrnn info`: what a checkpoint holds (model, vocabulary, options, progress and where
its weights came from), as lines or as one JSON object on stdout."""

from __future__ import annotations

import json
from typing import Any

import typer

from .. import finetune
from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..config import describe_input
from ..errors import CheckpointError, UsageError
from ..training import LN2
from ..vocab import describe_chars, describe_vocab
from .app import DEFAULT_CHECKPOINT, app, examples
from .progress import fmt_epochs
from .streams import Stdout, printing


@app.command(
    "info",
    epilog=examples("charrnn info checkpoints/best.pt", "charrnn info run/last.pt --json"),
)
def info_cmd(
    checkpoint: str = typer.Argument(DEFAULT_CHECKPOINT, help="A checkpoint file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    named: str | None = typer.Option(
        None, "--checkpoint", "-c", help="The checkpoint, named as sample and eval name it."
    ),
) -> None:
    """Describe a checkpoint: model, size, vocabulary, training options and progress."""
    printing(lambda: _info(_the_checkpoint(checkpoint, named), as_json))


def _the_checkpoint(positional: str, named: str | None) -> str:
    # `sample -c X` teaches `-c`, so `info -c X` works too; two different files do not.
    if named is None or positional in (named, DEFAULT_CHECKPOINT):
        return named or positional
    raise UsageError(f"two checkpoints given ({positional} and -c {named}): give one")


def _info(path: str, as_json: bool) -> None:
    out = Stdout()
    ckpt = load_checkpoint(path)
    model, vocab = model_from_checkpoint(ckpt, path)
    best = ckpt.get("best_val_loss")
    history = ckpt.get("history") or []
    info = {
        "checkpoint": path,
        "format_version": ckpt["version"],
        "charrnn_version": ckpt.get("charrnn_version"),
        "model": model.config.to_dict(),  # with "input" filled in for older checkpoints
        "num_params": model.num_params(),
        "vocab_size": len(vocab),
        "vocab": "".join(vocab.chars),
        "train_config": ckpt.get("train_config"),
        "step": ckpt.get("step"),
        "epoch": ckpt.get("epoch"),
        "best_val_loss": best,
        "best_val_bpc": best / LN2 if best is not None else None,
        "last_val_loss": history[-1]["val_loss"] if history else None,
        "corpus": {k: v for k, v in (ckpt.get("corpus") or {}).items() if k != "first_char"},
        "lineage": [
            {**entry, "source_now": finetune.source_status(entry, load_checkpoint)}
            for entry in ckpt.get("lineage") or []
        ],
        "model_choice": ckpt.get("model_choice"),  # None: the size was named (or older)
    }
    if as_json:
        try:
            text = json.dumps(info, indent=2, allow_nan=False)  # bare NaN is not JSON
        except ValueError:
            raise CheckpointError(
                f"checkpoint {path!r} is damaged (its options hold a NaN or infinite number)"
            ) from None
        out.print(text)
        return
    m = info["model"]
    lines = [
        f"checkpoint   {path} (format {info['format_version']}, charrnn {info['charrnn_version']})",
        f"model        {m['model']}, {m['num_layers']} x {m['hidden_size']}, dropout "
        f"{m['dropout']}{_levers(m)}: {info['num_params']:,} parameters",
        *_choice_line(info["model_choice"]),
        f"input        {describe_input(model.config)}",
        f"vocabulary   {describe_vocab(vocab.chars)}",
        f"trained      {info['step']} steps ({fmt_epochs(_epochs(ckpt))} epochs) on "
        f"{info['corpus'].get('name', '?')} ({info['corpus'].get('num_chars', 0):,} chars)",
        *_files_line(info["corpus"]),
        *_average_line(info["train_config"]),
        "best val     "
        + (f"{best:.4f} nats/char ({best / LN2:.4f} bits/char)" if best is not None else "-"),
        "options      " + ", ".join(f"{k}={v}" for k, v in (info["train_config"] or {}).items()),
        *_lineage_lines(info["lineage"]),
    ]
    out.print("\n".join(lines))


def _average_line(config: Any) -> list[str]:
    """With --ema the weights held are an average, not the last step's (training/average.py)."""
    decay = config.get("ema") if isinstance(config, dict) else None
    if not isinstance(decay, float) or decay <= 0:
        return []
    return [f"weights      a moving average of the trained weights (--ema {decay:g}), as validated"]


def _choice_line(choice: Any) -> list[str]:
    """How the size came about, when charrnn chose it (charrnn/sizing.py)."""
    if not isinstance(choice, dict) or not isinstance(choice.get("reason"), str):
        return []
    return [f"size         {choice['reason']}"]


def _lineage_lines(lineage: list[dict[str, Any]]) -> list[str]:
    """Where the weights came from (--init-from), oldest first, and whether each source
    file still holds the weights it had."""
    lines = []
    for entry in lineage:
        added = entry.get("added_chars") or ""
        lines.append(
            f"started from {entry['init_from']} (step {entry.get('step')}, trained on "
            f"{entry.get('corpus') or '?'}); added {len(added)} character(s)"
            + (f": {describe_chars(list(added))}" if added else "")
        )
        if isinstance(entry.get("weights_sha256"), str):
            now = entry["source_now"]
            lines.append(
                f"             its weights: sha256 {entry['weights_sha256'][:16]}; "
                + (now or "that file still holds them")
            )
    return lines


def _epochs(ckpt: dict[str, Any]) -> float:
    """The epochs a checkpoint has trained, with the part of the current one (as the done
    line of `train` counts them); the completed epochs where that cannot be worked out."""
    history = ckpt.get("history") or []
    if history and history[-1]["step"] == ckpt.get("step"):
        epoch = history[-1].get("epoch")
        if isinstance(epoch, int | float) and not isinstance(epoch, bool):
            return float(epoch)
    try:  # the cursor's window over the windows of an epoch, laid out as batches.make_streams
        config, cursor = ckpt["train_config"], ckpt["cursor"]
        num_chars = ckpt["corpus"]["num_chars"]
        num_train = num_chars - int(num_chars * config["val_fraction"])
        windows = (num_train - 1) // config["batch_size"] // config["seq_len"]
        return int(cursor["epoch"]) + int(cursor["window"]) / windows
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return float(ckpt.get("epoch") or 0)


def _files_line(corpus: dict[str, Any]) -> list[str]:
    files = corpus.get("files")
    if not isinstance(files, list) or not files:
        return []
    shown = ", ".join(
        f"{f.get('name')} ({f.get('size', 0):,} bytes)" for f in files[:5] if isinstance(f, dict)
    )
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return [f"files        {len(files)}: {shown}{more}"]


def _levers(model: dict) -> str:
    """The regularisers beyond plain dropout that the model trained with, if any."""
    parts = [
        "locked" if model.get("locked_dropout") else "",
        f"weight drop {model['weight_drop']}" if model.get("weight_drop") else "",
        f"embedding dropout {model['embed_dropout']}" if model.get("embed_dropout") else "",
    ]
    return "".join(f", {part}" for part in parts if part)
