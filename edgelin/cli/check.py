"""`edgelin check`: list every place a package breaks a target's rules (ops, dtypes, dynamic shapes)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from edgelin.cli import app, console, user_errors


@app.command()
@user_errors
def check(
    package: Path = typer.Argument(..., help="Package directory."),
    target: str = typer.Option(..., help="qnn-htp, openvino-npu, tvm or ort-cpu."),
    as_json: bool = typer.Option(False, "--json", help="Print the violations as JSON."),
) -> None:
    """List every violation of TARGET's rules in PACKAGE's step graphs; exit 1 if there is any."""
    from edgelin.check import as_dicts, check_package

    found = check_package(package, target)
    if as_json:
        print(json.dumps(as_dicts(found), indent=2))
    elif found:
        table = Table("graph", "node", "op", "rule", "detail", title=f"{package} on {target}: {len(found)} violations")
        for v in found:
            table.add_row(v.graph, v.node, v.op, v.rule, v.detail)
        console.print(table)
        console.print(", ".join(f"{n} {rule}" for rule, n in sorted(Counter(v.rule for v in found).items())))
    else:
        console.print(f"{package} fits {target}: no violations")
    if found:
        raise typer.Exit(1)
