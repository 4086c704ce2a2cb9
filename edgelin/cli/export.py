"""`edgelin export`: a zoo model or checkpoint to a package of step graphs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.cli import app, console, refuse_existing, user_errors
from edgelin.errors import EdgelinError


@app.command()
@user_errors
def export(
    model: Optional[str] = typer.Argument(None, help="Zoo name or checkpoint directory (default: the built-in model)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Package directory (default: out/MODEL)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing package."),
    prefill_tokens: int = typer.Option(64, help="Token count of the prefill graph (a fixed chunk)."),
    int8: bool = typer.Option(False, "--int8", help="Quantize: W8A8 (INT16 states), then validate against FP32."),
    int16: bool = typer.Option(False, "--int16", help="Quantize: W8A16 (16-bit activations, NPU layout)."),
    int4: bool = typer.Option(False, "--int4", help="Quantize: W4A16 (4-bit block-wise weights)."),
    w4a8: bool = typer.Option(False, "--w4a8", help="Quantize: W4A8."),
    w8: bool = typer.Option(False, "--w8", help="Quantize: weight-only int8, float activations."),
    state: str = typer.Option("int16", "--state", help="Quantized recurrent states: int16 (NPU-ready) or fp32 "
                              "(faster decode on CPU back ends)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="4-bit block size: 32 (default), 64 or 128."),
    gptq: bool = typer.Option(False, "--gptq", help="GPTQ instead of round-to-nearest for 4-bit weights."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration text (default: the shipped sample)."),
    rotate: bool = typer.Option(False, "--rotate", help="Hadamard-rotate the residual stream before quantizing."),
    smooth: Optional[float] = typer.Option(None, "--smooth", help="SmoothQuant alpha (e.g. 0.5) folded into the norms."),
    max_loss_increase: Optional[float] = typer.Option(None, "--max-loss-increase", help="Mixed precision: loss budget in %."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Target: ort-cpu, qnn-htp or openvino-npu (static shapes, "
                                          "batch 1); qnn-htp also quantizes, QDQ everywhere (W8A16 unless a scheme flag says otherwise)."),
    max_context: int = typer.Option(2048, "--max-context", help="KV slots of imported full-attention layers (LFM2); past it they slide."),
) -> None:
    """Export MODEL to a package of loop-free ONNX step graphs (decode + prefill) with a manifest."""
    from edgelin.exporters.package import export_package
    from edgelin.models.loading import load_model

    if prefill_tokens < 2:
        raise EdgelinError(f"--prefill-tokens must be >= 2, got {prefill_tokens}")
    from edgelin.exporters.profiles import EXPORT_PROFILES

    if profile is not None and profile not in EXPORT_PROFILES:
        raise EdgelinError(f"--profile must be one of {', '.join(EXPORT_PROFILES)}, not {profile!r}")
    if profile == "qnn-htp":
        _export_htp(model, output, force, prefill_tokens, max_context, calib, (int8, int16, int4, w4a8),
                    refused={"--w8": w8, "--state": state != "int16", "--group-size": group_size is not None, "--gptq": gptq, "--rotate": rotate,
                             "--smooth": smooth is not None, "--max-loss-increase": max_loss_increase is not None})
        return
    from edgelin.cli.quantize import build_scheme, export_quantized

    # MatMulNBits is ONNX Runtime's own op; the NPU takes 4-bit weights as standard blocked DequantizeLinear
    int4_format = "qdq" if profile == "openvino-npu" else "matmul_nbits"
    scheme = build_scheme(int8, int16, int4, w4a8, w8, group_size=group_size or 32, gptq=gptq, smooth=smooth, rotate=rotate,
                          int4_format=int4_format, state=state)
    if scheme is None and (rotate or smooth is not None or max_loss_increase is not None or calib or gptq or state != "int16"):
        raise EdgelinError("--calib, --rotate, --smooth, --gptq, --state and --max-loss-increase need --int8, --int16, --int4, "
                           "--w4a8 or --w8")
    with console.status("loading model"):
        loaded = load_model(model, max_context=max_context)
    out = output or Path("out") / (loaded.name if scheme is None else f"{loaded.name}-{scheme.name}")
    refuse_existing(out, force)
    if not loaded.trained:
        console.print(f"[yellow]note:[/] {loaded.name} has no trained weights here; exporting its seeded random init")
    if scheme is not None:
        export_quantized(loaded, out, scheme, calib=calib, prefill_tokens=prefill_tokens,
                         max_loss_increase=max_loss_increase, force=force)
    else:
        with console.status(f"exporting {loaded.name} ({loaded.model.num_parameters() / 1e6:.1f}M parameters)"):
            export_package(loaded.model, out, prefill_tokens=prefill_tokens, force=force,
                           source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json,
                           special_tokens=loaded.special_tokens)
        console.print(f"wrote [bold]{out}[/]")
    if profile is not None:
        _apply_profile(out, profile)


def _export_htp(model: Optional[str], output: Optional[Path], force: bool, prefill_tokens: int, max_context: int,
                calib: Optional[Path], flags: tuple[bool, bool, bool, bool], *, refused: dict[str, bool]) -> None:
    """--profile qnn-htp: HTP runs quantized graphs only, so this always quantizes, QDQ everywhere:
    W8A16 with no scheme flag or --int16, else --int8 (W8A8), --int4 (W4A16), --w4a8 (W4A8); the
    A names the linear layers' inputs, everything else stays uint16 (see edgelin.quantize.htp)."""
    import tempfile

    from edgelin.calibration.streams import read_text
    from edgelin.cli.quantize import progress_bars
    from edgelin.cli.validate import print_summary
    from edgelin.exporters.package import export_package
    from edgelin.models.loading import load_model
    from edgelin.quantize.htp import HtpScheme
    from edgelin.quantize.htp_package import run_htp_pipeline

    bad = [flag for flag, on in refused.items() if on]
    if bad:
        raise EdgelinError(f"--profile qnn-htp does not take {', '.join(bad)} (HTP reads quantized activations only, its "
                           f"4-bit weights have one scale per output channel, and smoothing, rotation, GPTQ and mixed "
                           f"precision are CPU-pipeline steps)")
    chosen = [name for name, on in zip(("--int8", "--int16", "--int4", "--w4a8"), flags) if on]
    if len(chosen) > 1:
        raise EdgelinError(f"choose one scheme, not {' and '.join(chosen)}")
    weight_bits, act_bits = {"--int8": (8, 8), "--int16": (8, 16), "--int4": (4, 16), "--w4a8": (4, 8)}[
        chosen[0] if chosen else "--int16"]
    scheme = HtpScheme(weight_bits=weight_bits, matmul_act_bits=act_bits)
    text = read_text(calib)
    with console.status("loading model"):
        loaded = load_model(model, max_context=max_context)
    out = output or Path("out") / f"{loaded.name}-{scheme.label}-htp"
    refuse_existing(out, force)
    if not loaded.trained:
        console.print(f"[yellow]note:[/] {loaded.name} has no trained weights here; exporting its seeded random init")
    with tempfile.TemporaryDirectory(prefix="edgelin-export-") as tmp:
        with console.status(f"exporting {loaded.name} ({loaded.model.num_parameters() / 1e6:.1f}M parameters)"):
            fp = export_package(loaded.model, Path(tmp) / "fp32", prefill_tokens=prefill_tokens,
                                source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json,
                                special_tokens=loaded.special_tokens)
        with progress_bars() as on_progress:
            result = run_htp_pipeline(fp, out, scheme, text, force=force, on_progress=on_progress)
    print_summary(result, out, out / "report")
    _report_check(out, "qnn-htp")


def _apply_profile(out: Path, profile: str) -> None:
    from edgelin.exporters.profiles import apply_profile

    with console.status(f"making {out} static for {profile}"):
        apply_profile(out, profile)
    _report_check(out, profile)


def _report_check(out: Path, profile: str) -> None:
    from collections import Counter

    from edgelin.check import check_package

    left = Counter(v.rule for v in check_package(out, profile))
    if left:
        console.print(f"[yellow]note:[/] {out} still breaks {profile}'s rules ("
                      + ", ".join(f"{n} {rule}" for rule, n in sorted(left.items()))
                      + f"); see `edgelin check {out} --target {profile}`")
    else:
        console.print(f"{out} fits {profile}")
