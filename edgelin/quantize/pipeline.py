"""FP package -> calibrate -> quantize -> validate -> package with report/, one call.

`edgelin.export` (`edgelin export MODEL --int8 ...`) and `edgelin quantize` run this. What applies
the scheme is a registered `Quantizer`, picked by the export profile (`Profile.quantizer`): the CPU
pass (smoothing, mixed precision, GPTQ, `quantize_package`) or HTP's QDQ everywhere
(`quantize_htp_package`). `on_progress(stage, done, total)` reports each slow stage; nothing is
printed here.
"""
from __future__ import annotations

import ctypes
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgelin.atomic import scratch_dir
from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.smoothing import smooth_package
from edgelin.calibration.streams import make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.exporters.profiles import apply_profile, export_profile
from edgelin.quantize.budget import CALIBRATION, VALIDATION, decode_every, parameter_count, stream_layout
from edgelin.quantize.htp import HtpScheme
from edgelin.quantize.htp_package import htp_scheme_by_name, quantize_htp_package
from edgelin.quantize.package import quantize_package
from edgelin.quantize.schemes import QuantScheme, scheme_by_name
from edgelin.quantize.sensitivity import LossProbe, layer_sensitivity, mixed_precision
from edgelin.runtime.package import read_package, rewrite_package
from edgelin.runtime.tokenizer import load_tokenizer
from edgelin.validate.metrics import compare_packages
from edgelin.validate.report import report_files

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class QuantizeJob:
    """What a quantizer is given: the FP package, its calibration, and where to stage packages."""

    fp_dir: Path  # the FP package (symbolic batch)
    work: Path  # scratch directory, removed afterwards
    scheme: Any  # of the quantizer's scheme_type
    table: CalibrationTable  # of fp_dir
    text: str  # calibration text
    streams: int
    tokens: int
    decode_every: int  # calibration: one chunk in this many through the decode graph
    profile: str | None  # the quantized package is made static for this profile
    max_loss_increase: float | None
    step: Progress


@dataclass(frozen=True)
class Quantizer:
    """One way of applying a scheme to an FP package; an export profile names it (`Profile.quantizer`).

    Attributes:
        scheme_type: the scheme class it applies.
        scheme_by_name: a scheme name or command-line flag name (+ scheme options) -> a scheme.
        apply: job -> (the quantized package in the profile's form, fields added to the result).
    """

    scheme_type: type
    scheme_by_name: Callable[..., Any]
    apply: Callable[[QuantizeJob], tuple[Path, dict[str, Any]]]

    def accept(self, scheme: Any, profile: str | None) -> None:
        """Refuse a scheme this quantizer cannot apply (a W8A8() for qnn-htp, an HtpScheme() for the CPU pass)."""
        if not isinstance(scheme, self.scheme_type):
            raise EdgelinError(f"{'--profile ' + profile if profile else 'an export without a profile'} quantizes "
                               f"with {self.scheme_type.__name__}, not {type(scheme).__name__}")


def _return_freed_memory() -> None:
    """Free what the last stage left: its sessions (reference cycles, each holding a memory map of
    the package's weights, which would otherwise stay mapped beside the next stage's), then the C
    heap's free pages, which glibc keeps (the quantizer's protobuf copies: 0.6 GB at 350M parameters)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _token_streams(package: Path, text: str, streams: int, tokens: int) -> np.ndarray:
    return make_streams(load_tokenizer(package, read_package(package)).encode(text), streams, tokens)


def _apply_qdq(job: QuantizeJob) -> tuple[Path, dict[str, Any]]:
    """The CPU pass: (smooth) -> (mixed precision) -> (GPTQ) -> `quantize_package` -> (static)."""
    scheme, table, src, step = job.scheme, job.table, job.fp_dir, job.step
    if scheme.smooth is not None:
        src, _ = smooth_package(job.fp_dir, job.work / "smoothed", table, scheme.smooth)
        table = calibrate_package(src, job.text, streams=job.streams, tokens=job.tokens, decode_every=job.decode_every,
                                  progress=lambda d, t: step("calibrate (smoothed)", d, t))
    sensitivity: dict[str, float] = {}
    if job.max_loss_increase is not None:
        probe = LossProbe(src, table, _token_streams(src, job.text, 2, min(job.tokens, 1024)))
        sensitivity = layer_sensitivity(probe, scheme, progress=lambda d, t: step("sensitivity", d, t))
        scheme, _ = mixed_precision(probe, scheme, job.max_loss_increase, sensitivity)
        step("mixed precision", 1, 1)
    hessians = None
    if scheme.gptq:
        from edgelin.quantize.gptq import collect_hessians

        step("gptq hessians", 0, 1)
        hessians = collect_hessians(src, _token_streams(src, job.text, job.streams, job.tokens))
        step("gptq hessians", 1, 1)
    staged = quantize_package(src, job.work / "quantized", scheme, table, hessians=hessians)
    step("quantize", 1, 1)
    if job.profile is not None:
        staged = apply_profile(staged, job.profile)
    return staged, {"sensitivity": sensitivity, "smoothing": scheme.smooth}


def _apply_htp(job: QuantizeJob) -> tuple[Path, dict[str, Any]]:
    """HTP: the FP package made static for the profile, then QDQ everywhere."""
    static = apply_profile(job.fp_dir, job.profile, job.work / "static")
    staged = quantize_htp_package(job.fp_dir, static, job.work / "quantized", job.scheme, job.text, table=job.table,
                                  streams=job.streams, tokens=job.tokens, progress=job.step)
    return staged, {}


QUANTIZERS: dict[str, Quantizer] = {
    "qdq": Quantizer(QuantScheme, scheme_by_name, _apply_qdq),
    "htp": Quantizer(HtpScheme, htp_scheme_by_name, _apply_htp),
}


def quantizer_for(profile: str | None) -> Quantizer:
    """The quantizer an export for `profile` uses (None: no profile, the CPU pass)."""
    return QUANTIZERS[export_profile(profile).quantizer if profile is not None else "qdq"]


def split_text(fp_dir: Path, text: str, streams: int, tokens: int) -> tuple[str, str]:
    """(calibration part, the rest): calibration takes what its streams need, validation the remainder."""
    n_tok = len(load_tokenizer(fp_dir, read_package(fp_dir)).encode(text))
    need = streams * tokens
    if n_tok <= need * 1.25:
        return text, text  # too short to split: validate on the calibration text (said in the report)
    cut = int(len(text) * need / n_tok) + 1
    return text[:cut], text[cut:]


def run_pipeline(fp_dir: str | Path, out_dir: str | Path, scheme: QuantScheme | HtpScheme, text: str, *,
                 profile: str | None = None, eval_text: str | None = None, streams: int | None = None,
                 tokens: int | None = None, max_loss_increase: float | None = None, horizon: int | None = None,
                 eval_streams: int | None = None, validate: bool = True, force: bool = False,
                 reference_dir: str | Path | None = None, table: CalibrationTable | None = None,
                 on_progress: Progress | None = None) -> dict[str, Any]:
    """Quantize the FP package `fp_dir` into `out_dir` (report/ inside) and return the validation result.

    Args:
        scheme: a `QuantScheme` (W8A8(), ...), or an `HtpScheme` for profile qnn-htp.
        text: calibration text. When `eval_text` is None, calibration uses the head of `text`
            and validation the rest.
        profile: an export profile (ort-cpu, qnn-htp, openvino-npu): its quantizer applies the
            scheme and the package is made static for it, batch 1 (validation then runs one stream).
        streams, tokens: calibration streams and tokens per stream; eval_streams, horizon: validation's.
            None: the stage's default, cut for a large model (`edgelin.quantize.budget`).
        max_loss_increase: budget in % for the mixed-precision search (None: the scheme as given).
        validate: run validation and ship report/ in the package.
        table: a calibration table of `fp_dir` (from `edgelin calibrate`) to use instead of
            calibrating again; `text` still drives smoothing, GPTQ, sensitivity and validation.
        reference_dir: the package to validate against (default `fp_dir`; the unrotated FP package
            when `fp_dir` holds a rotated model).
    Returns:
        The validation dict (see `compare_packages`) plus "candidate", "calibration_text_reused",
        "budget" (the parameter count, each stage's layout and the rule that chose it) and the
        quantizer's fields ("sensitivity", "smoothing" for the CPU pass), or {} when `validate` is
        False. Sizes are of the model files, before report/ was added.
    """
    fp_dir, out = Path(fp_dir), Path(out_dir)
    step = on_progress or (lambda *a: None)
    quantizer = quantizer_for(profile)
    quantizer.accept(scheme, profile)
    if profile is not None and max_loss_increase is not None:
        export_profile(profile).refuse(["max-loss-increase"])
    if max_loss_increase is not None and not (isinstance(max_loss_increase, (int, float)) and 0 < max_loss_increase < float("inf")):
        raise EdgelinError(f"--max-loss-increase must be a finite budget in % above 0, not {max_loss_increase!r}")
    if not text or not text.strip():
        raise EdgelinError("the calibration text is empty")
    parameters = parameter_count(fp_dir)
    cal = stream_layout(CALIBRATION, parameters, streams, tokens)
    val = stream_layout(VALIDATION, parameters, eval_streams, horizon)
    streams, tokens = cal.streams, cal.tokens
    graphs = read_package(fp_dir).graphs
    every = decode_every(parameters, tokens, graphs["prefill"].tokens if "prefill" in graphs else 1)
    calib, rest = (text, eval_text) if eval_text is not None else split_text(fp_dir, text, streams, tokens)
    with scratch_dir("pipeline") as tmp:
        if table is None:
            table = calibrate_package(fp_dir, calib, streams=streams, tokens=tokens, decode_every=every,
                                      progress=lambda d, t: step("calibrate", d, t))
            _return_freed_memory()
        staged, fields = quantizer.apply(QuantizeJob(fp_dir, tmp, scheme, table, calib, streams, tokens, every, profile,
                                                     max_loss_increase, step))
        _return_freed_memory()
        result: dict[str, Any] = {}
        report: dict[str, Path | bytes] = {}
        if validate:
            result = compare_packages(reference_dir or fp_dir, staged, rest, horizon=val.tokens, streams=val.streams,
                                      progress=lambda d, t: step("validate", d, t))
            result.update(fields, candidate=str(out), calibration_text_reused=rest is calib,
                          budget={"parameters": parameters, "calibration": {**cal.to_dict(), "decode_every": every},
                                  "validation": val.to_dict()})
            report = {f"report/{k}": v for k, v in report_files(result).items()}
        rewrite_package(staged, out, files=report, force=force)
    return result
