"""FP package -> calibrate -> (smooth) -> (mixed precision) -> quantize -> validate, one call.

`edgelin export MODEL --int8` and `edgelin quantize` both run this. `on_progress(stage, done, total)`
reports each slow stage; nothing is printed here.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.smoothing import smooth_package
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.package import quantize_package
from edgelin.quantize.schemes import QuantScheme
from edgelin.quantize.sensitivity import LossProbe, layer_sensitivity, mixed_precision
from edgelin.runtime.package import read_package, write_package
from edgelin.runtime.tokenizer import load_tokenizer
from edgelin.validate.metrics import compare_packages
from edgelin.validate.report import report_files

Progress = Callable[[str, int, int], None]


def split_text(fp_dir: Path, text: str, streams: int, tokens: int) -> tuple[str, str]:
    """(calibration part, the rest): calibration takes what its streams need, validation the remainder."""
    m = read_package(fp_dir)
    n_tok = len(load_tokenizer(fp_dir, m).encode(text))
    need = streams * tokens
    if n_tok <= need * 1.25:
        return text, text  # too short to split: validate on the calibration text (said in the report)
    cut = int(len(text) * need / n_tok) + 1
    return text[:cut], text[cut:]


def run_pipeline(fp_dir: str | Path, out_dir: str | Path, scheme: QuantScheme, text: str, *,
                 eval_text: str | None = None, streams: int = 4, tokens: int = MIN_STREAM_TOKENS,
                 max_loss_increase: float | None = None, horizon: int = 8192, eval_streams: int = 8,
                 validate: bool = True, force: bool = False, reference_dir: str | Path | None = None,
                 table: CalibrationTable | None = None, on_progress: Progress | None = None) -> dict[str, Any]:
    """Quantize the FP package `fp_dir` into `out_dir` (report/ inside) and return the validation result.

    Args:
        text: calibration text. When `eval_text` is None, calibration uses the head of `text`
            and validation the rest.
        max_loss_increase: budget in % for the mixed-precision search (None: the scheme as given).
        validate: run validation and ship report/ in the package.
        table: a calibration table of `fp_dir` (from `edgelin calibrate`) to use instead of
            calibrating again; `text` still drives GPTQ, sensitivity and validation.
        reference_dir: the package to validate against (default `fp_dir`; the unrotated FP package
            when `fp_dir` holds a rotated model).
    Returns:
        The validation dict (see `compare_packages`) plus "sensitivity", "smoothing", "calibration_text",
        or {} when `validate` is False.
    """
    fp_dir, out = Path(fp_dir), Path(out_dir)
    step = on_progress or (lambda *a: None)
    if not text or not text.strip():
        raise EdgelinError("the calibration text is empty")
    calib, rest = (text, eval_text) if eval_text is not None else split_text(fp_dir, text, streams, tokens)
    with tempfile.TemporaryDirectory(prefix="edgelin-pipeline-", dir=out.parent if out.parent.exists() else None) as tmp:
        src = fp_dir
        if table is None:
            table = calibrate_package(src, calib, streams=streams, tokens=tokens,
                                      progress=lambda d, t: step("calibrate", d, t))
        if scheme.smooth is not None:
            src, _ = smooth_package(fp_dir, Path(tmp) / "smoothed", table, scheme.smooth)
            table = calibrate_package(src, calib, streams=streams, tokens=tokens,
                                      progress=lambda d, t: step("calibrate (smoothed)", d, t))
        sensitivity: dict[str, float] = {}
        if max_loss_increase is not None:
            ids = make_streams(load_tokenizer(src, read_package(src)).encode(calib), 2, min(tokens, 1024))
            probe = LossProbe(src, table, ids)
            sensitivity = layer_sensitivity(probe, scheme, progress=lambda d, t: step("sensitivity", d, t))
            scheme, reached = mixed_precision(probe, scheme, max_loss_increase, sensitivity)
            step("mixed precision", 1, 1)
        hessians = None
        if scheme.gptq:
            from edgelin.quantize.gptq import collect_hessians

            step("gptq hessians", 0, 1)
            hessians = collect_hessians(src, make_streams(load_tokenizer(src, read_package(src)).encode(calib), streams, tokens))
            step("gptq hessians", 1, 1)
        staged = quantize_package(src, Path(tmp) / "quantized", scheme, table, hessians=hessians)
        step("quantize", 1, 1)
        result: dict[str, Any] = {}
        extra: dict[str, bytes] = {}
        if validate:
            result = compare_packages(reference_dir or fp_dir, staged, rest, horizon=horizon, streams=eval_streams,
                                      progress=lambda d, t: step("validate", d, t))
            result.update(sensitivity=sensitivity, smoothing=scheme.smooth, candidate=str(out),
                          calibration_text_reused=rest is calib)
            extra = {f"report/{k}": v for k, v in report_files(result).items()}
        m = read_package(staged)
        files: dict[str, Path | bytes] = {name: staged / name for name in m.files}
        files.update(extra)
        manifest = {k: v for k, v in m.raw.items() if k not in ("files", "format_version")}
        write_package(out, files, manifest, force=force)
    return result  # sizes are of the model files, before report/ was added


def load_table(path: str | Path) -> CalibrationTable:
    try:
        return CalibrationTable.from_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgelinError(f"no such calibration table: {path}") from None


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1, default=float) + "\n"

