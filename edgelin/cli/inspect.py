"""`edgelin inspect`: what is inside a package."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgelin.cli import app, console, user_errors


@app.command()
@user_errors
def inspect(
    package: Path = typer.Argument(..., help="Package directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show a package's graphs, inputs/outputs, states (shapes, bytes) and op histograms."""
    from edgelin.inspect import inspect_package

    info = inspect_package(package)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    arch = info["architecture"]
    console.print(f"[bold]{info['path']}[/]  format {info['format_version']}, {info['producer']}, "
                  f"source layout [bold]{info['source_layout']}[/], precision {info['precision'].get('scheme')}")
    console.print(f"pattern {arch.get('pattern')} x {arch.get('n_layers')} layers, d_model {arch.get('d_model')}, "
                  f"vocab {info['vocab_size']}, tokenizer {info['tokenizer'].get('type')}, {info['size_bytes'] / 1e6:.2f} MB on disk")
    if info["max_context"]:
        console.print(f"full-attention layers keep a KV cache of {info['max_context']} tokens; past it they slide over the last {info['max_context']}")
    states = Table("state", "kind", "shape", "dtype", "bytes / sequence", title="states")
    for s in info["states"]:
        states.add_row(s["name"], s["kind"], str(s["shape"]), s["dtype"], f"{s['bytes_per_sequence']:,}")
    states.add_row("total", "", "", "", f"{info['state_bytes_per_sequence']:,}")
    console.print(states)
    for name, g in info["graphs"].items():
        io = Table("", "name", "shape", "dtype", title=f"graph {name}: {g['file']}, tokens={g['tokens']}, {g['weight_elements']:,} weight elements")
        for kind, rows in (("in", g["inputs"]), ("out", g["outputs"])):
            for n, shape, dtype in rows:
                io.add_row(kind, n, str(shape), dtype)
        console.print(io)
        console.print("ops: " + ", ".join(f"{op} {n}" for op, n in g["ops"].items()), highlight=False)
