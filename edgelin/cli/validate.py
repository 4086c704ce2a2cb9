"""`edgelin validate`: a candidate package against its FP reference, with a report."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from edgelin.cli import app, console, user_errors


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def print_summary(result: dict[str, Any], package: Path, report: Optional[Path]) -> None:
    """One table: sizes, loss increase, KL, top-1 agreement, and where the report is."""
    from rich.table import Table

    if not result:
        console.print(f"wrote [bold]{package}[/] (not validated)")
        return
    t = Table(title=f"{package} ({result['precision'].get('scheme', 'fp32')})", show_header=True)
    t.add_column("")
    t.add_column("FP32 reference", justify="right")
    t.add_column("candidate", justify="right")
    t.add_row("size", _size(result["size_bytes_reference"]), f"{_size(result['size_bytes_candidate'])} "
              f"(x{result['size_ratio']:.2f})")
    t.add_row("loss (nats/token)", f"{result['loss_reference']:.4f}", f"{result['loss_candidate']:.4f}")
    t.add_row("loss increase", "", f"{result['loss_increase_pct']:+.3f}%")
    t.add_row("KL mean / p99", "", f"{result['kl_mean']:.2e} / {result['kl_p99']:.2e}")
    t.add_row("top-1 agreement", "", f"{100 * result['top1_agreement']:.2f}%")
    t.add_row("tokens compared", "", f"{result['streams']} x {result['horizon']}")
    t.add_row("report", "", str(report) if report else "-")
    console.print(t)


@app.command()
@user_errors
def validate(
    reference: Path = typer.Option(..., "--reference", help="The FP package."),
    candidate: Path = typer.Option(..., "--candidate", help="The quantized (or otherwise changed) package."),
    text: Optional[Path] = typer.Option(None, "--text", help="Evaluation text (default: the shipped sample)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result JSON here."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Report directory (default: CANDIDATE.report)."),
    horizon: int = typer.Option(8192, help="Stream length in tokens (drift horizon)."),
    streams: int = typer.Option(8, help="Parallel streams (fewer if the text is short)."),
    backend: str = typer.Option("ort", help="Runtime back end for both packages."),
) -> None:
    """Loss, perplexity, KL, top-1 agreement, SNR per layer and state, drift; report.md/.json + plots."""
    from edgelin.calibration.streams import read_text
    from edgelin.cli.quantize import progress_bars
    from edgelin.quantize.pipeline import dumps
    from edgelin.validate import compare_packages, write_report

    body = read_text(text)
    with progress_bars() as on_progress:
        result = compare_packages(reference, candidate, body, horizon=horizon, streams=streams, backend=backend,
                                  progress=lambda d, t: on_progress("validate", d, t))
    report = write_report(result, out or candidate.with_name(f"{candidate.name}.report"))
    if json_out:
        json_out.write_text(dumps(result), encoding="utf-8")
    print_summary(result, candidate, report)
