"""`edgelin quantize`: an FP package to an INT8 / INT16 / INT4 package (calibrate, quantize, validate)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.atomic import check_destination
from edgelin.cli import app, scheme_flag, user_errors
from edgelin.cli.ui import print_summary, progress_bars
from edgelin.errors import EdgelinError


@app.command()
@user_errors
def quantize(
    package: Path = typer.Argument(..., help="FP32 package (from `edgelin export`)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Quantized package (default: PACKAGE-SCHEME)."),
    int8: bool = typer.Option(False, "--int8", help="W8A8: int8 per-channel weights, 8-bit activations, INT16 states."),
    int16: bool = typer.Option(False, "--int16", help="W8A16: int8 weights, 16-bit activations (NPU layout)."),
    int4: bool = typer.Option(False, "--int4", help="W4A16: 4-bit block-wise weights, 16-bit activations."),
    w4a8: bool = typer.Option(False, "--w4a8", help="W4A8: 4-bit block-wise weights, 8-bit activations."),
    w8: bool = typer.Option(False, "--w8", help="Weight-only int8: int8 per-channel weights, float activations."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="4-bit block size: 32 (default), 64 or 128."),
    gptq: bool = typer.Option(False, "--gptq", help="GPTQ instead of round-to-nearest for 4-bit weights."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration text (default: the shipped sample)."),
    table: Optional[Path] = typer.Option(None, "--table", help="Calibration table from `edgelin calibrate` (skips calibrating)."),
    eval_text: Optional[Path] = typer.Option(None, "--eval-text", help="Validation text (default: the calibration text's tail)."),
    observer: Optional[str] = typer.Option(None, help="Activation ranges: minmax, percentile, entropy or mse."),
    state: str = typer.Option("int16", help="Recurrent state precision: int16 (NPU-ready) or fp32 (faster decode on CPU back ends)."),
    embedding: str = typer.Option("int8", help="Embedding table: int8 or fp32."),
    lm_head: Optional[str] = typer.Option(None, "--lm-head", help="LM head: int8 (default), int4 or fp32."),
    int4_format: str = typer.Option("matmul_nbits", help="4-bit graph form: matmul_nbits (ORT, fast) or qdq (standard)."),
    smooth: Optional[float] = typer.Option(None, "--smooth", help="SmoothQuant with this alpha (e.g. 0.5)."),
    max_loss_increase: Optional[float] = typer.Option(None, "--max-loss-increase", help="Keep sensitive layers at higher precision until the loss increase (%) is at most this."),
    streams: Optional[int] = typer.Option(None, help="Calibration streams (default 4, fewer for a large model)."),
    tokens: Optional[int] = typer.Option(None, help="Tokens per calibration stream (default 2048)."),
    horizon: Optional[int] = typer.Option(None, help="Validation stream length, the drift horizon (default 8192 "
                                          "x 8 streams, fewer streams and tokens for a large model: the report says)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip validation (no report/)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
) -> None:
    """Calibrate PACKAGE on real text, quantize it with one scheme, validate it against PACKAGE."""
    from edgelin.calibration.streams import read_text
    from edgelin.calibration.table import CalibrationTable
    from edgelin.quantize.pipeline import run_pipeline
    from edgelin.quantize.schemes import scheme_by_name

    name = scheme_flag(int8=int8, int16=int16, int4=int4, w4a8=w4a8, w8=w8)
    if name is None:
        raise EdgelinError("choose a scheme: --int8, --int16, --int4, --w4a8 or --w8")
    scheme = scheme_by_name(name, group_size=group_size, gptq=gptq, observer=observer, state=state, embedding=embedding,
                            lm_head=lm_head, int4_format=int4_format, smooth=smooth)
    out = output or package.with_name(f"{package.name}-{scheme.name}")
    check_destination(out, what="package", force=force, folder=True)
    text = read_text(calib)
    with progress_bars() as on_progress:
        result = run_pipeline(package, out, scheme, text, eval_text=read_text(eval_text) if eval_text else None,
                              streams=streams, tokens=tokens, max_loss_increase=max_loss_increase, horizon=horizon,
                              validate=not no_validate, force=force, on_progress=on_progress,
                              table=CalibrationTable.load(table) if table else None)
    print_summary(result, out, report=out / "report" if result else None)
