"""`edgelin quantize`: an FP package to an INT8 / INT16 / INT4 package (calibrate, quantize, validate)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import typer

from edgelin.cli import app, console, refuse_existing, user_errors
from edgelin.errors import EdgelinError


def build_scheme(int8: bool, int16: bool, int4: bool, w4a8: bool, w8: bool = False, *, group_size: int = 32, gptq: bool = False,
                 observer: Optional[str] = None, state: str = "int16", embedding: str = "int8",
                 lm_head: Optional[str] = None, int4_format: str = "matmul_nbits", smooth: Optional[float] = None,
                 rotate: bool = False):
    """The scheme one of --int8 / --int16 / --int4 / --w4a8 / --w8 names, or None when none is given."""
    from edgelin.quantize.schemes import W4A8, W4A16, W8, W8A8, W8A16, PerGroup

    chosen = [name for name, on in (("--int8", int8), ("--int16", int16), ("--int4", int4), ("--w4a8", w4a8),
                                    ("--w8", w8)) if on]
    if len(chosen) > 1:
        raise EdgelinError(f"choose one scheme, not {' and '.join(chosen)}")
    if not chosen:
        return None
    cls = {"--int8": W8A8, "--int16": W8A16, "--int4": W4A16, "--w4a8": W4A8, "--w8": W8}[chosen[0]]
    kwargs: dict = {"state": state, "embedding": embedding, "int4_format": int4_format, "gptq": gptq,
                    "smooth": smooth, "rotate": rotate}
    if observer:
        kwargs["observer"] = observer
    if lm_head:
        kwargs["lm_head"] = lm_head
    if cls.weight_bits == 4:
        kwargs["granularity"] = PerGroup(group_size)
    return cls(**kwargs)


@contextlib.contextmanager
def progress_bars() -> Iterator:
    """A rich progress display; yields on_progress(stage, done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        yield on_progress


def read_eval_text(path: Optional[Path]) -> Optional[str]:
    from edgelin.calibration.streams import read_text

    return read_text(path) if path is not None else None


def export_quantized(loaded, out: Path, scheme, *, calib: Optional[Path], prefill_tokens: int,
                     max_loss_increase: Optional[float], force: bool) -> None:
    """export MODEL --int8 ...: FP export (and a rotated copy) in a temporary directory, then the pipeline."""
    import tempfile

    from edgelin.calibration.streams import read_text
    from edgelin.cli.validate import print_summary
    from edgelin.exporters.package import export_package
    from edgelin.quantize.pipeline import run_pipeline

    text = read_text(calib)
    kw = dict(prefill_tokens=prefill_tokens, source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json,
              special_tokens=loaded.special_tokens)
    with tempfile.TemporaryDirectory(prefix="edgelin-export-") as tmp:
        fp = Path(tmp) / "fp32"
        with console.status(f"exporting {loaded.name} ({loaded.model.num_parameters() / 1e6:.1f}M parameters)"):
            export_package(loaded.model, fp, **kw)
            source = fp
            if scheme.rotate:
                from edgelin.calibration.rotation import rotate_model

                source = export_package(rotate_model(loaded.model), Path(tmp) / "rotated", **kw)
        with progress_bars() as on_progress:
            result = run_pipeline(source, out, scheme, text, reference_dir=fp, max_loss_increase=max_loss_increase,
                                  force=force, on_progress=on_progress)
    print_summary(result, out, out / "report")


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
    group_size: int = typer.Option(32, "--group-size", help="4-bit block size: 32, 64 or 128."),
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
    streams: int = typer.Option(4, help="Calibration streams."),
    tokens: int = typer.Option(2048, help="Tokens per calibration stream."),
    horizon: int = typer.Option(8192, help="Validation stream length (drift horizon)."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip validation (no report/)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
) -> None:
    """Calibrate PACKAGE on real text, quantize it with one scheme, validate it against PACKAGE."""
    from edgelin.calibration.streams import read_text
    from edgelin.quantize.pipeline import load_table, run_pipeline

    scheme = build_scheme(int8, int16, int4, w4a8, w8, group_size=group_size, gptq=gptq, observer=observer, state=state,
                          embedding=embedding, lm_head=lm_head, int4_format=int4_format, smooth=smooth)
    if scheme is None:
        raise EdgelinError("choose a scheme: --int8, --int16, --int4, --w4a8 or --w8")
    out = output or package.with_name(f"{package.name}-{scheme.name}")
    refuse_existing(out, force)
    text = read_text(calib)
    with progress_bars() as on_progress:
        result = run_pipeline(package, out, scheme, text, eval_text=read_eval_text(eval_text), streams=streams,
                              tokens=tokens, max_loss_increase=max_loss_increase, horizon=horizon,
                              validate=not no_validate, force=force, on_progress=on_progress,
                              table=load_table(table) if table else None)
    from edgelin.cli.validate import print_summary

    print_summary(result, out, report=out / "report" if result else None)
