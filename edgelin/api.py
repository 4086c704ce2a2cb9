"""`edgelin.export`: a model to a deployable, validated package in one call (what `edgelin export` runs).

    import edgelin

    edgelin.export("gla-10m", "out/gla-int8", scheme="int8")                 # W8A8, validated
    edgelin.export("gla-10m", "out/gla-int4", scheme="int4", group_size=64, gptq=True)
    edgelin.export("gla-10m", "out/gla-htp", profile="qnn-htp")              # W8A16, QDQ everywhere
    edgelin.export(my_lm, "out/mine")                                         # FP32 step graphs

The steps are the FP export, then `edgelin.quantize.pipeline.run_pipeline` (calibrate, quantize,
validate) for a scheme, and the profile's static form for a profile. Progress goes to
`on_progress(stage, done, total)`; nothing is printed.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgelin.atomic import check_destination, scratch_dir
from edgelin.calibration.streams import read_text
from edgelin.errors import EdgelinError
from edgelin.exporters.package import DEFAULT_PREFILL_TOKENS, DEFAULT_VERIFY_TOKENS, export_package
from edgelin.exporters.profiles import Profile, apply_profile, export_profile
from edgelin.models.importers import DEFAULT_MAX_CONTEXT
from edgelin.models.lm import LM
from edgelin.models.loading import LoadedModel, load_model
from edgelin.quantize.htp import HtpScheme
from edgelin.quantize.pipeline import quantizer_for, run_pipeline
from edgelin.quantize.schemes import QuantScheme

Progress = Callable[[str, int, int], None]

NEEDS_SCHEME = ("--calib, --group-size, --rotate, --smooth, --gptq, --state and --max-loss-increase need --int8, "
                "--int16, --int4, --w4a8 or --w8")


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote.

    Attributes:
        package: the package directory.
        model: the model's name (zoo name, checkpoint directory name, or "model" for an `LM`).
        trained: False when a zoo name without shipped weights was exported at its seeded random init.
        report: the validation result (`run_pipeline`'s, also in package/report/); {} for an FP export.
        violations: rule -> how many places still break the profile's rules (`edgelin check`); {}
            when the package fits or no profile was given.
    """

    package: Path
    model: str
    trained: bool
    report: dict[str, Any]
    violations: dict[str, int]


def resolve_scheme(scheme: str | QuantScheme | HtpScheme | None, profile: str | None = None, *,
                   group_size: int | None = None, gptq: bool = False, rotate: bool = False,
                   smooth: float | None = None, state: str | None = None,
                   max_loss_increase: float | None = None, calib: str | os.PathLike | None = None
                   ) -> QuantScheme | HtpScheme | None:
    """The scheme an export applies: `scheme` (a name or a scheme object), or the profile's default.

    The options are `export`'s; those the profile refuses, or given without a scheme, are errors.
    Returns:
        The scheme, or None for an FP export.
    """
    options = {"group_size": group_size, "gptq": gptq or None, "rotate": rotate or None, "smooth": smooth,
               "state": state}
    options = {k: v for k, v in options.items() if v is not None}
    given = [k.replace("_", "-") for k in options] + (["max-loss-increase"] if max_loss_increase is not None else [])
    target: Profile | None = export_profile(profile) if profile is not None else None
    if target is not None:
        target.refuse(given + ([scheme] if isinstance(scheme, str) else []))
    if scheme is None and target is not None:
        scheme = target.default_scheme
    if scheme is None:
        if given or calib is not None:
            raise EdgelinError(NEEDS_SCHEME)
        return None
    quantizer = quantizer_for(profile)
    if not isinstance(scheme, str):
        if options:
            raise EdgelinError(f"{', '.join(options)} go with a scheme name; a {type(scheme).__name__} carries its own")
        quantizer.accept(scheme, profile)
        return scheme
    if target is not None and target.int4_format is not None:
        options["int4_format"] = target.int4_format
    return quantizer.scheme_by_name(scheme, **options)


def _load(model: str | LM | None, max_context: int, revision: str | None) -> LoadedModel:
    if isinstance(model, LM):
        bad = next((name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)
        if bad is not None:
            raise EdgelinError(f"the model's {bad} holds inf or NaN; nothing was exported")
        return LoadedModel(model.eval(), "model", "edgelin", True)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise EdgelinError(f"the model must be a built-in name, a checkpoint directory or a hub id, not {model!r}")
    return load_model(model, max_context=max_context, revision=revision)


def export(model: str | LM | None = None, out: str | os.PathLike | None = None, *,
           scheme: str | QuantScheme | HtpScheme | None = None, profile: str | None = None,
           calib: str | os.PathLike | None = None, group_size: int | None = None, gptq: bool = False,
           rotate: bool = False, smooth: float | None = None, state: str | None = None,
           max_loss_increase: float | None = None, prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
           verify_tokens: int = DEFAULT_VERIFY_TOKENS, max_context: int = DEFAULT_MAX_CONTEXT, revision: str | None = None,
           streams: int | None = None, tokens: int | None = None, horizon: int | None = None, force: bool = False,
           fp16: bool = False, on_progress: Progress | None = None) -> ExportResult:
    """Export `model` to a package of step graphs; with a scheme, calibrate, quantize and validate it.

    Args:
        model: a zoo name or checkpoint directory (`edgelin.models.loading.load_model`; None: the
            built-in model), or an `LM`.
        out: the package directory (default: out/MODEL, out/MODEL-SCHEME when quantized).
        scheme: None (FP32), a name (int8, int16, int4, w4a8, w8 or w8a8, w4a16, ...) or a scheme
            object (`W4A16(...)`, `HtpScheme(...)` for qnn-htp).
        profile: ort-cpu, qnn-htp or openvino-npu: static graphs at batch 1 for that target; qnn-htp
            always quantizes (W8A16 unless `scheme` names another), QDQ everywhere.
        calib: calibration text file (default: the shipped sample); its tail validates.
        group_size, gptq, rotate, smooth, state: options of a named scheme (4-bit block size, GPTQ
            4-bit weights, Hadamard rotation, SmoothQuant alpha, "int16" / "fp32" states).
        max_loss_increase: mixed precision: keep sensitive layers higher until the loss increase (%)
            is at most this.
        prefill_tokens: token count of the prefill graph (a fixed chunk).
        verify_tokens: token count K of the verify graph (K decode steps in one run, for speculative
            decoding; 0: none).
        max_context: KV slots of imported full-attention layers (LFM2, Llama, Qwen2, Qwen3; GPT-2 at most
            its n_positions).
        revision: branch, tag or commit of a hub id `model` (ORG/NAME) in the local Hugging Face cache.
        streams, tokens: calibration streams and tokens per stream (None: 4 x 2048, fewer streams for
            a large model: `edgelin.quantize.budget`).
        horizon: validation stream length in tokens (None: 8192, shorter for a large model).
        force: replace an existing package.
        fp16: store the FP32 export's weight matrices as float16 (half the file), computed in float32
            (`edgelin.exporters.fp16`); not with a scheme or a profile.
        on_progress: called as on_progress(stage, done, total) through every slow stage.
    Returns:
        An `ExportResult`: the package, the validation report, the profile's remaining violations.
    Raises:
        EdgelinError: a bad model, option or text; nothing is written then.
    Example:
        >>> r = edgelin.export("gla-tiny", "out/gla-int8", scheme="int8")  # doctest: +SKIP
        >>> r.report["top1_agreement"]  # doctest: +SKIP
        0.99...
    """
    step = on_progress or (lambda *a: None)
    if not isinstance(verify_tokens, int) or isinstance(verify_tokens, bool) or verify_tokens != 0 and not 2 <= verify_tokens <= 64:
        raise EdgelinError(f"--verify-tokens must be 0 (no verify graph) or an integer in [2, 64], got {verify_tokens!r}")
    for flag, value, low in (("--prefill-tokens", prefill_tokens, 2), ("--max-context", max_context, 1),
                             ("--streams", streams, 1), ("--tokens", tokens, 1), ("--horizon", horizon, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 1 << 24):
            raise EdgelinError(f"{flag} must be an integer in [{low}, {1 << 24}], got {value!r}")
    chosen = resolve_scheme(scheme, profile, group_size=group_size, gptq=gptq, rotate=rotate, smooth=smooth,
                            state=state, max_loss_increase=max_loss_increase, calib=calib)
    if fp16 and (chosen is not None or profile is not None):
        raise EdgelinError("--fp16 stores an FP32 export's weights as float16; it goes without a quantization "
                           "scheme (--int8, --int4, ...: smaller weights already) and without --profile")
    text = read_text(calib) if chosen is not None else ""
    step("load model", 0, 1)
    loaded = _load(model, max_context, revision)
    step("load model", 1, 1)
    suffix = chosen.to_dict()["scheme"] if chosen is not None else "fp16" if fp16 else None
    out = Path(out) if out is not None else Path("out") / (loaded.name if suffix is None else f"{loaded.name}-{suffix}")
    check_destination(out, what="package", force=force, folder=True)
    report = _export(loaded, out, chosen, profile, text, prefill_tokens=prefill_tokens, verify_tokens=verify_tokens,
                     force=force, fp16=fp16,
                     max_loss_increase=max_loss_increase, streams=streams, tokens=tokens, horizon=horizon, step=step,
                     release=not isinstance(model, LM))  # a model the caller passed stays theirs, intact
    violations: Counter[str] = Counter()
    if profile is not None:
        from edgelin.check import check_package

        violations.update(v.rule for v in check_package(out, profile))
    return ExportResult(out, loaded.name, loaded.trained, report, dict(sorted(violations.items())))


def _export(loaded: LoadedModel, out: Path, scheme: QuantScheme | HtpScheme | None, profile: str | None, text: str, *,
            prefill_tokens: int, verify_tokens: int, force: bool, fp16: bool, max_loss_increase: float | None,
            streams: int | None, tokens: int | None, horizon: int | None, step: Progress,
            release: bool = False) -> dict[str, Any]:
    """FP export straight to `out`, or to a temporary FP package made static or quantized into `out`.
    `release`: the model is not needed afterwards; its weights are freed once traced."""
    kw = dict(prefill_tokens=prefill_tokens, source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json,
              special_tokens=loaded.special_tokens, generation=loaded.generation)
    if isinstance(scheme, HtpScheme):
        verify_tokens = 0  # HTP's QDQ-everywhere pass calibrates each graph it runs; it has no verify graph
    kw["verify_tokens"] = verify_tokens
    step("export", 0, 1)
    if scheme is None and profile is None:
        export_package(loaded.model, out, force=force, fp16=fp16, release=release, **kw)
        step("export", 1, 1)
        return {}
    with scratch_dir("export") as tmp:
        rotated = isinstance(scheme, QuantScheme) and scheme.rotate
        # the unrotated FP package of a rotated export is only the validation reference: no verify graph
        fp = export_package(loaded.model, tmp / "fp32", release=release and not rotated,
                            **{**kw, "verify_tokens": 0 if rotated else verify_tokens})
        source = fp
        if rotated:
            from edgelin.calibration.rotation import rotate_model

            source = export_package(rotate_model(loaded.model), tmp / "rotated", release=True, **kw)
        step("export", 1, 1)
        if scheme is None:
            apply_profile(fp, profile, out, force=force)
            return {}
        return run_pipeline(source, out, scheme, text, profile=profile, reference_dir=fp, streams=streams,
                            tokens=tokens, horizon=horizon, max_loss_increase=max_loss_increase, force=force,
                            on_progress=step)
