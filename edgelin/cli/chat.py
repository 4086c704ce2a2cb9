"""`edgelin chat`: a conversation with a package's model in its chat template (torch-free)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from edgelin.cli import app, err_console, user_errors
from edgelin.errors import EdgelinError

COMMANDS = {"/reset": "start a new conversation", "/exit": "quit"}


def _lines(interactive: bool):
    """The user's lines: typed at a `> ` prompt (with line editing) on a terminal, else read from stdin."""
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        yield line.rstrip("\r\n")


@app.command()
@user_errors
def chat(
    package: Path = typer.Argument(..., help="Package directory (one with a chat template)."),
    system: Optional[str] = typer.Option(None, help="System message that starts every conversation."),
    template: Optional[str] = typer.Option(None, help="One of the package's named chat templates (default: its default)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Reply length cap (default: the package's, else 512)."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the package's generation defaults)."),
    top_k: Optional[int] = typer.Option(None, help="Keep the k most likely tokens (0 = off; default: the package's)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (1 = off; default: the package's)."),
    seed: int = typer.Option(0, help="Sampling seed of the first reply (the next ones count up from it)."),
    backend: str = typer.Option("ort", help="Back end to run on."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads."),
    device: Optional[str] = typer.Option(None, help="Device for back ends that have several (OpenVINO: CPU, NPU, GPU)."),
    trust_native_code: bool = typer.Option(False, "--trust-native-code", help="Allow a back end that runs native "
                                           "code from the package (tvm); only for packages you trust."),
) -> None:
    """Chat with a package's model: each line is a message; /reset starts over, /exit quits.

    Reads a terminal or a pipe. Each turn feeds the model only the new tokens: its state holds the conversation.
    """
    from edgelin.runtime import Chat, Session, package_sampling

    if max_new_tokens is not None and max_new_tokens < 0:
        raise EdgelinError(f"--max-new-tokens must be an integer >= 0, not {max_new_tokens}")
    session = Session(package, backend=backend, threads=threads, device=device, trust_native_code=trust_native_code)
    sampling = package_sampling(session.manifest, temperature=temperature, top_k=top_k, top_p=top_p)
    conversation = Chat(session, system=system, template=template, sampling=sampling,
                        max_new_tokens=max_new_tokens, seed=seed)
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(f"chatting with {escape(str(package))}: "
                          + ", ".join(f"{c} {what}" for c, what in COMMANDS.items()), highlight=False)
    for line in _lines(interactive):
        text = line.strip()
        if text == "/exit":
            break
        if text == "/reset":
            conversation.reset()
            if interactive:
                err_console.print("(a new conversation)", highlight=False)
            continue
        if not text or (text.startswith("/") and " " not in text):
            if text:
                err_console.print(f"[bold red]error:[/] unknown command {escape(text)} ({', '.join(COMMANDS)})",
                                  highlight=False)
            continue
        reply = None
        try:
            reply = conversation.send(text)
            for piece in reply:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops the reply; the conversation keeps what it said
            if not interactive:
                raise
            if reply is not None:
                reply.close()
        except EdgelinError as e:  # on a terminal, a turn the template refuses is not the end
            if not interactive:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
