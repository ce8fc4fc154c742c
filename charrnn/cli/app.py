"""The typer app that every command module registers on, and the options' shared parts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import typer

from .. import __version__

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion, typer's own
    no_args_is_help=True,
    help="Character-level RNN / LSTM / GRU: train on any text, sample into a pipeline.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def examples(*commands: str) -> str:
    """A --help epilog: real commands, one per paragraph (typer keeps paragraphs)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {c}" for c in commands)


def completer(names: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return complete


DEVICE_METAVAR = "[auto|cpu|cuda|cuda:N|mps]"
DEFAULT_CHECKPOINT = "checkpoints/best.pt"  # where `train` writes by default


def complete_device(incomplete: str) -> list[str]:
    import torch  # already loaded by charrnn's modules; only counting GPUs here

    names = ["auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    return [n for n in [*names, "mps"] if n.startswith(incomplete)]


def field_default(cls: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(f"charrnn {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand not in (None, "train"):  # train times its own steps
        from ..threads import use_quick_choice

        use_quick_choice()  # one thread when other work holds a core (charrnn/threads.py)


def option(cls: type, name: str, help: str, *flags: str, choices: tuple[str, ...] = ()) -> Any:
    """An option whose default is the dataclass field's: each default is defined once.
    With `choices`, --help lists them and the shell completes them (the config checks)."""
    if choices:
        return typer.Option(
            field_default(cls, name),
            *flags,
            help=help,
            metavar="[" + "|".join(choices) + "]",
            autocompletion=completer(choices),
        )
    return typer.Option(field_default(cls, name), *flags, help=help)
