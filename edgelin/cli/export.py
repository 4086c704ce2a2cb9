"""`edgelin export`: a zoo model or checkpoint to a package of step graphs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.cli import app, console, scheme_flag, user_errors
from edgelin.cli.ui import note, print_fit, print_summary, progress_bars


@app.command()
@user_errors
def export(
    model: Optional[str] = typer.Argument(None, help="Zoo name, checkpoint directory, or Hugging Face hub id ORG/NAME "
                                          "from the local cache (default: the built-in model)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Package directory (default: out/MODEL)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing package."),
    prefill_tokens: int = typer.Option(64, help="Token count of the prefill graph (a fixed chunk)."),
    verify_tokens: int = typer.Option(4, help="Token count K of the verify graph: K decode steps in one run, which "
                                      "speculative decoding verifies drafts with (0: no verify graph)."),
    int8: bool = typer.Option(False, "--int8", help="Quantize: W8A8 (INT16 states), then validate against FP32."),
    int16: bool = typer.Option(False, "--int16", help="Quantize: W8A16 (16-bit activations, NPU layout)."),
    int4: bool = typer.Option(False, "--int4", help="Quantize: W4A16 (4-bit block-wise weights)."),
    w4a8: bool = typer.Option(False, "--w4a8", help="Quantize: W4A8."),
    w8: bool = typer.Option(False, "--w8", help="Quantize: weight-only int8, float activations."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights as float16 (half the size), computed in float32."),
    state: Optional[str] = typer.Option(None, "--state", help="Quantized recurrent states: int16 (NPU-ready, the "
                                        "default) or fp32 (faster decode on CPU back ends)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="4-bit block size: 32 (default), 64 or 128."),
    gptq: bool = typer.Option(False, "--gptq", help="GPTQ instead of round-to-nearest for 4-bit weights."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration text (default: the shipped sample)."),
    rotate: bool = typer.Option(False, "--rotate", help="Hadamard-rotate the residual stream before quantizing."),
    smooth: Optional[float] = typer.Option(None, "--smooth", help="SmoothQuant alpha (e.g. 0.5) folded into the norms."),
    max_loss_increase: Optional[float] = typer.Option(None, "--max-loss-increase", help="Mixed precision: loss budget in %."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Target: ort-cpu, qnn-htp or openvino-npu (static shapes, "
                                          "batch 1); qnn-htp also quantizes, QDQ everywhere (W8A16 unless a scheme flag says otherwise)."),
    max_context: int = typer.Option(2048, "--max-context", help="KV slots of imported full-attention layers (LFM2, Llama, "
                                    "Qwen, GPT-2 up to its n_positions); past it they slide."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a hub id in the local "
                                           "Hugging Face cache (default: main)."),
) -> None:
    """Export MODEL to a package of loop-free ONNX step graphs (decode, prefill, verify) with a manifest."""
    from edgelin.api import export as export_model

    scheme = scheme_flag(int8=int8, int16=int16, int4=int4, w4a8=w4a8, w8=w8)
    with progress_bars() as on_progress:
        result = export_model(model, output, scheme=scheme, profile=profile, calib=calib, group_size=group_size,
                              gptq=gptq, rotate=rotate, smooth=smooth, state=state, max_loss_increase=max_loss_increase,
                              prefill_tokens=prefill_tokens, verify_tokens=verify_tokens, max_context=max_context, revision=revision, force=force,
                              fp16=fp16, on_progress=on_progress)
    if not result.trained:
        note(f"{result.model} has no trained weights here; exported its seeded random init")
    if result.report:
        print_summary(result.report, result.package, result.package / "report")
    else:
        console.print(f"wrote [bold]{result.package}[/]")
    if profile is not None:
        print_fit(result.package, profile, result.violations)
