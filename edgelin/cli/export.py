"""`edgelin export`: a zoo model or checkpoint to a package of step graphs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.cli import app, console, refuse_existing, user_errors
from edgelin.errors import EdgelinError


@app.command()
@user_errors
def export(
    model: Optional[str] = typer.Argument(None, help="Zoo name or checkpoint directory (default: the built-in model)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Package directory (default: out/MODEL)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing package."),
    prefill_tokens: int = typer.Option(64, help="Token count of the prefill graph (a fixed chunk)."),
) -> None:
    """Export MODEL to a package of loop-free ONNX step graphs (decode + prefill) with a manifest."""
    from edgelin.exporters.package import export_package
    from edgelin.models.loading import load_model

    if prefill_tokens < 2:
        raise EdgelinError(f"--prefill-tokens must be >= 2, got {prefill_tokens}")
    with console.status("loading model"):
        loaded = load_model(model)
    out = output or Path("out") / loaded.name
    refuse_existing(out, force)
    if not loaded.trained:
        console.print(f"[yellow]note:[/] {loaded.name} has no trained weights here; exporting its seeded random init")
    with console.status(f"exporting {loaded.name} ({loaded.model.num_parameters() / 1e6:.1f}M parameters)"):
        export_package(loaded.model, out, prefill_tokens=prefill_tokens, force=force,
                       source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json)
    console.print(f"wrote [bold]{out}[/]")
