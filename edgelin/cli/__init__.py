"""The `edgelin` command line: the typer app and its error handling.

Each command lives in its own module beside this one (export.py, generate.py, ...); `main` imports
them, which registers them on `app`. A command parses its arguments, calls the library and prints;
what several show (progress bars, the validation table) is in `ui.py`, and no command module imports
another. torch and the back ends load lazily inside the commands.
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path

import typer
from rich.console import Console

from edgelin.errors import EdgelinError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Linear-recurrent LMs on edge CPUs and NPUs.")
console = Console(soft_wrap=True)  # a message is one line whatever the paths in it; tables still fit the width
err_console = Console(stderr=True, soft_wrap=True)

COMMAND_MODULES = ["export", "generate", "inspect", "train", "calibrate", "quantize", "validate", "compile", "check", "bench"]


def user_errors(fn):
    """Turn an EdgelinError into one `error:` line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgelinError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def refuse_existing(out: Path, force: bool) -> None:
    """Fail before any work is done when the output exists and --force was not given."""
    if (out.exists() or out.is_symlink()) and not force:
        raise EdgelinError(f"{out} exists; pass --force to overwrite")


def scheme_flag(**flags: bool) -> str | None:
    """The one scheme flag given (int8=True -> "int8"), or None; two are an error."""
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        raise EdgelinError(f"choose one scheme, not {' and '.join('--' + name for name in chosen)}")
    return chosen[0] if chosen else None


def load_commands() -> typer.Typer:
    for name in COMMAND_MODULES:
        importlib.import_module(f"edgelin.cli.{name}")
    return app


def main() -> None:
    load_commands()()
