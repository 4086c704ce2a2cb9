"""The `edgelin` command line: the typer app and its error handling.

Each command lives in its own module beside this one (export.py, generate.py, ...); `main` imports
them, which registers them on `app`. A command parses its arguments, calls the library and prints;
what several show (progress bars, the validation table) is in `ui.py`, and no command module imports
another. torch and the back ends load lazily inside the commands, so the base install (the runtime)
runs the commands that need neither, and the others name the extra to install.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Iterator, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgelin import __version__
from edgelin.errors import EdgelinError

console = Console(soft_wrap=True)  # a message is one line whatever the paths in it; tables still fit the width
err_console = Console(stderr=True, soft_wrap=True)

COMMAND_MODULES = ["export", "generate", "chat", "inspect", "train", "calibrate", "quantize", "validate", "compile", "check", "bench",
                   "serve"]

# Modules outside the base install, and the extra (pyproject.toml) that brings each.
OPTIONAL_MODULES = {"torch": "export", "onnxscript": "export", "safetensors": "export", "matplotlib": "export",
                    "tokenizers": "tokenizers", "openvino": "openvino", "tvm": "tvm", "starlette": "serve",
                    "uvicorn": "serve"}
CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# click's UsageError, from the click that typer runs on (newer typers carry their own copy, typer._click).
UsageError = typer.BadParameter.__base__


def fail(message: str) -> NoReturn:
    """Print one `error:` line on stderr and exit with code 2."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def user_errors(fn):
    """Turn an EdgelinError into one `error:` line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgelinError as e:
            fail(str(e))

    return wrapper


def missing_extra(e: ModuleNotFoundError, command: str | None) -> str | None:
    """What to install when `e` names a module of an extra, else None (a broken install, not a choice)."""
    module = (e.name or "").partition(".")[0]
    if module not in OPTIONAL_MODULES:
        return None
    fix = f"pip install 'edgelin[{OPTIONAL_MODULES[module]}]'"
    if module == "torch":
        fix += f" (CPU only: first {CPU_TORCH})"
    return f"{f'edgelin {command}' if command else 'this command'} needs {module}, which is not installed: {fix}"


@contextlib.contextmanager
def one_line_errors(ctx: typer.Context | None = None) -> Iterator[None]:
    """click's usage errors (unknown option, missing argument, bad value) and a missing optional module
    as one `error:` line and exit code 2, as for an EdgelinError; Ctrl-C as one line and exit code 130."""
    try:
        yield
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `edgelin` alone: the help text (click >= 8.2)
            raise
        message = e.format_message().replace("\n", " ").rstrip(".")
        if message[1:2].islower():  # "No such option" -> "no such option", as edgelin's own messages
            message = message[0].lower() + message[1:]
        fail(message + (f" (see '{e.ctx.command_path} --help')" if e.ctx else ""))
    except ModuleNotFoundError as e:
        message = missing_extra(e, ctx.invoked_subcommand if ctx else None)
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt:  # outputs are written atomically: an interrupted command leaves no half-written one
        interrupted()
    except Exception as e:
        if not _caused_by_interrupt(e):
            raise
        interrupted()  # e.g. Ctrl-C inside a C extension's import, which re-raises it as ImportError


def interrupted() -> NoReturn:
    err_console.print("[bold red]error:[/] interrupted", highlight=False)
    raise typer.Exit(130) from None


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


class OneLineErrors(TyperGroup):
    """The app's group: errors of the command line itself in one line instead of typer's boxed usage text."""

    def make_context(self, *args, **kwargs) -> typer.Context:
        with one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context):
        with one_line_errors(ctx):  # the command's own arguments are parsed, and the command runs, in here
            return super().invoke(ctx)


app = typer.Typer(name="edgelin", cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Linear-recurrent LMs on edge CPUs and NPUs.")


def show_version(value: bool) -> None:
    if value:
        console.print(f"edgelin {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                         help="Show the version and exit.")) -> None:
    """Linear-recurrent LMs on edge CPUs and NPUs."""


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
