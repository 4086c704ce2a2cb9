"""`edgelin validate`: a candidate package against its FP reference, with a report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.atomic import check_destination, write_atomic
from edgelin.cli import app, user_errors
from edgelin.cli.ui import print_summary, progress_bars


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
    trust_native_code: bool = typer.Option(False, "--trust-native-code", help="Allow a back end that runs native "
                                           "code from the package (tvm); only for packages you trust."),
) -> None:
    """Loss, perplexity, KL, top-1 agreement, SNR per layer and state, drift; report.md/.json + plots."""
    import matplotlib  # noqa: F401  (the report's plots need it: fail now, not after the comparison)

    from edgelin.calibration.streams import read_text
    from edgelin.validate import compare_packages, report_json, write_report

    report_dir = out or candidate.with_name(f"{candidate.name}.report")
    check_destination(report_dir, what="report", folder=True)
    if json_out:
        check_destination(json_out, what="result JSON")
    body = read_text(text)
    with progress_bars() as on_progress:
        result = compare_packages(reference, candidate, body, horizon=horizon, streams=streams, backend=backend,
                                  trust_native_code=trust_native_code,
                                  progress=lambda d, t: on_progress("validate", d, t))
    report = write_report(result, report_dir)
    if json_out:
        write_atomic(json_out, report_json(result), what="result JSON")
    print_summary(result, candidate, report)
