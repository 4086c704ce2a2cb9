"""`edgelin compile`: add OpenVINO IR or TVM libraries of a package's step graphs to the package."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.cli import app, console, user_errors
from edgelin.errors import EdgelinError

BACKENDS = ("openvino", "tvm")


@app.command(name="compile")
@user_errors
def compile_(
    package: Path = typer.Argument(..., help="Package directory (FP32 or quantized)."),
    backend: str = typer.Option(..., help="openvino or tvm."),
    target: Optional[str] = typer.Option(None, help="tvm: x86_64 or aarch64 (default: this machine)."),
    stateful: bool = typer.Option(True, help="openvino: also build the stateful variant (states kept inside)."),
) -> None:
    """Lower PACKAGE's step graphs for BACKEND and record them in its manifest (`backends`)."""
    if backend not in BACKENDS:
        raise EdgelinError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if target is not None and backend != "tvm":
        raise EdgelinError("--target applies to --backend tvm only")
    with console.status(f"compiling {package} for {backend}"):
        if backend == "openvino":
            from edgelin.exporters.openvino import export_openvino

            export_openvino(package, variants=("stateless", "stateful") if stateful else ("stateless",))
        else:
            from edgelin.exporters.tvm import export_tvm

            export_tvm(package, target=target)
    console.print(f"added {backend}{' ' + target if target else ''} graphs to [bold]{package}[/]")
