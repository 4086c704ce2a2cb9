"""`edgelin calibrate`: stream text through an FP package and write its calibration table (JSON)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.atomic import check_destination, write_atomic
from edgelin.cli import app, console, user_errors
from edgelin.cli.ui import note, progress_bars


@app.command()
@user_errors
def calibrate(
    package: Path = typer.Argument(..., help="FP32 package (from `edgelin export`)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Table file (default: PACKAGE.calibration.json)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration text (default: the shipped sample)."),
    streams: int = typer.Option(4, help="Parallel text streams."),
    tokens: int = typer.Option(2048, help="Tokens per stream (states carried across the whole stream)."),
    decode_every: int = typer.Option(4, help="Every n-th chunk runs through the decode graph."),
    force: bool = typer.Option(False, "--force", help="Replace an existing table."),
) -> None:
    """Observe every quantized tensor (MatMul inputs, states, gates) over real text; write the table."""
    from rich.table import Table

    from edgelin.calibration import calibrate_package, read_text

    out = output or package.with_name(f"{package.name}.calibration.json")
    check_destination(out, what="calibration table", force=force)
    text = read_text(calib)
    with progress_bars() as on_progress:
        table = calibrate_package(package, text, streams=streams, tokens=tokens, decode_every=decode_every,
                                  progress=lambda d, t: on_progress("calibrate", d, t))
    write_atomic(out, table.to_json(), force=force, what="calibration table")
    view = Table(title=f"calibration of {package}")
    for col in ("state", "graph", "min", "max"):
        view.add_column(col)
    for graph, tensors in table.graphs.items():
        for name, t in tensors.items():
            if t["role"] == "state_out":
                view.add_row(name, graph, f"{t['min']:.4g}", f"{t['max']:.4g}")
    console.print(view)
    meta = table.meta
    console.print(f"{meta['streams']} streams x {meta['tokens_per_stream']} tokens, "
                  f"{sum(len(g) for g in table.graphs.values())} tensors observed; wrote [bold]{out}[/]")
    if meta["short_streams"]:
        note("streams are shorter than 2048 tokens; states may not reach their full range")
