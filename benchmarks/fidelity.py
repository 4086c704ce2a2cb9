"""Fidelity of quantized packages: loss increase, KL, top-1 agreement, size and drift, per scheme.

Calibrates on the first 90% of a text (tinyshakespeare by default) and measures on the last 10%
only, with the stages `edgelin export MODEL --int8` runs (calibrate -> smooth/rotate -> quantize ->
validate through edgelin.runtime.Session on ONNX Runtime CPU); each calibration table is measured
once per model and reused by the schemes that share it. Prints a table, writes JSON and a
markdown page. Byte-level models only (the reference models are).

    python benchmarks/fidelity.py --models gla-10m hybrid-10m --json out/fidelity.json \\
        --markdown docs/BENCHMARKS.md

A zoo name without trained weights (not in edgelin/models/trained/) is measured on its seeded random
init and flagged "untrained": such numbers say the pipeline runs, not how well it quantizes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgelin.calibration.rotation import rotate_model  # noqa: E402
from edgelin.exporters.package import export_package  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.calibration import calibrate_package, make_streams  # noqa: E402
from edgelin.calibration.smoothing import smooth_package  # noqa: E402
from edgelin.quantize.gptq import collect_hessians  # noqa: E402
from edgelin.quantize.package import quantize_package  # noqa: E402
from edgelin.runtime.tokenizer import ByteTokenizer  # noqa: E402
from edgelin.validate import compare_packages  # noqa: E402
from edgelin.quantize.schemes import W4A8, W4A16, W8, W8A8, W8A16, PerGroup, StatePrecision  # noqa: E402
from edgelin.runtime import Session  # noqa: E402

CONFIGS = {
    "w8a8": lambda: W8A8(),
    "w8a8-minmax": lambda: W8A8(observer="minmax"),
    "w8a8-percentile": lambda: W8A8(observer="percentile"),
    "w8a8-mse": lambda: W8A8(observer="mse"),
    "w8a8-smooth": lambda: W8A8(smooth=0.5),
    "w8a8-rotate": lambda: W8A8(rotate=True),
    "w8a8-state-fp32": lambda: W8A8(state=StatePrecision.FP32),
    "w8a16": lambda: W8A16(),
    "w8": lambda: W8(),
    "w4a16-g32": lambda: W4A16(),
    "w4a16-g128": lambda: W4A16(granularity=PerGroup(128)),
    "w4a16-g32-gptq": lambda: W4A16(gptq=True),
    "w4a16-g32-rotate": lambda: W4A16(rotate=True),
    "w4a8-g32": lambda: W4A8(),
    "w4a8-g32-smooth": lambda: W4A8(smooth=0.5),
    "ort-static": None,  # onnxruntime's quantize_static, the generic baseline (see ort_static)
}
DEFAULT = ["ort-static", "w8a8", "w8a8-minmax", "w8a8-percentile", "w8a8-smooth", "w8a8-rotate", "w8a8-state-fp32", "w8a16",
           "w8", "w4a16-g32", "w4a16-g128", "w4a16-g32-gptq", "w4a16-g32-rotate", "w4a8-g32", "w4a8-g32-smooth"]


def decode_speed(pkg: Path, steps: int = 200) -> float:
    """Tokens per second of the decode graph, batch 1, 2 threads."""
    s = Session(pkg, threads=2)
    state, ids = s.new_state(1), np.array([[65]])
    for _ in range(10):
        _, state = s.forward(ids, state)
    t = time.perf_counter()
    for _ in range(steps):
        _, state = s.forward(ids, state)
    return steps / (time.perf_counter() - t)


def ort_static(fp: Path, out: Path, calib: str, streams: int, tokens: int) -> Path:
    """Baseline: onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint8
    activations, MinMax) on each step graph, fed the same text with states carried. It quantizes
    every op type it knows, state paths included; states stay float at the graph boundary."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgelin.runtime import read_package, write_package

    m = read_package(fp)
    ids = make_streams(ByteTokenizer().encode(calib), streams, tokens)
    feeds = {"decode": [], "prefill": []}
    sess, state, C = Session(fp), None, m.graphs["prefill"].tokens
    state = sess.new_state(ids.shape[0])
    for i, a in enumerate(range(0, ids.shape[1] - C + 1, C)):
        if i % 4 == 0:  # as edgelin's calibration: every 4th chunk token by token through decode
            for t in range(a, a + C):
                feeds["decode"].append({"input_ids": ids[:, t:t + 1], **state})
                _, state = sess._step("decode", ids[:, t:t + 1], state)
        else:
            feeds["prefill"].append({"input_ids": ids[:, a:a + C], **state})
            _, state = sess._step("prefill", ids[:, a:a + C], state)

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    files = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, g in m.graphs.items():
        dst = out.parent / f"{out.name}-{g.file}"
        quantize_static(str(fp / g.file), str(dst), Reader(feeds[name]), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        files[g.file] = dst
    # quantize_static writes self-contained graphs: no shared weights file
    manifest = {k: v for k, v in m.raw.items() if k not in ("files", "format_version", "weights")}
    manifest["precision"] = {"scheme": "ort-quantize_static", "layers": {}}
    return write_package(out, files, manifest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gla-10m", "hybrid-10m"])
    ap.add_argument("--configs", nargs="+", default=DEFAULT, choices=sorted(CONFIGS))
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--calib-streams", type=int, default=8)
    ap.add_argument("--calib-tokens", type=int, default=2048)
    ap.add_argument("--eval-streams", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=8192)
    ap.add_argument("--json", default="out/fidelity.json")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()

    text = Path(args.text).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    calib, held_out = text[:cut], text[cut:]
    rows, curves = [], {}
    with tempfile.TemporaryDirectory(prefix="edgelin-fidelity-") as tmp:
        for name in args.models:
            loaded = load_model(name)
            work = Path(tmp) / Path(name).name
            fp = export_package(loaded.model, work / "fp32")
            fp_speed = decode_speed(fp)
            sources: dict[tuple, tuple] = {}  # (smooth, rotate) -> (package, table); calibrated once each

            def source(scheme) -> tuple[Path, object]:
                key = (scheme.smooth, scheme.rotate)
                if key not in sources:
                    base = export_package(rotate_model(loaded.model), work / "rotated") if scheme.rotate else fp
                    table = calibrate_package(base, calib, streams=args.calib_streams, tokens=args.calib_tokens)
                    if scheme.smooth is not None:
                        base, _ = smooth_package(base, work / f"smooth-{scheme.rotate}", table, scheme.smooth)
                        table = calibrate_package(base, calib, streams=args.calib_streams, tokens=args.calib_tokens)
                    sources[key] = (base, table)
                return sources[key]

            hessians, ref_cache = {}, {}
            for cfg in args.configs:
                t = time.perf_counter()
                if cfg == "ort-static":
                    out = ort_static(fp, work / cfg, calib, args.calib_streams, args.calib_tokens)
                else:
                    scheme = CONFIGS[cfg]()
                    src, table = source(scheme)
                    if scheme.gptq and src not in hessians:
                        ids = make_streams(ByteTokenizer().encode(calib), args.calib_streams, args.calib_tokens)
                        hessians[src] = collect_hessians(src, ids)
                    out = quantize_package(src, work / cfg, scheme, table, hessians=hessians.get(src))
                r = compare_packages(fp, out, held_out, horizon=args.horizon, streams=args.eval_streams,
                                     reference_cache=ref_cache)
                row = {"model": Path(name).name, "trained": loaded.trained, "config": cfg, "seconds": time.perf_counter() - t,
                       "decode_tok_s": decode_speed(out), "decode_tok_s_fp32": fp_speed,
                       **{k: r[k] for k in ("loss_reference", "loss_candidate", "loss_increase_pct", "kl_mean",
                                            "kl_p99", "top1_agreement", "size_bytes_reference",
                                            "size_bytes_candidate", "size_ratio", "drift_slope", "tokens", "horizon")},
                       "snr_db_state_min": min(r["snr_db_state"].values()),
                       "snr_db_layer_min": min(r["snr_db_layer"].values()) if r["snr_db_layer"] else None,
                       "layers": r["precision"]["layers"]}
                rows.append(row)
                curves[f"{Path(name).name}/{cfg}"] = r["drift"]
                print(f"{Path(name).name} {'' if loaded.trained else '(untrained) '}{cfg:<18} loss {row['loss_reference']:.4f} -> "
                      f"{row['loss_candidate']:.4f} ({row['loss_increase_pct']:+.3f}%)  KL {row['kl_mean']:.2e}  "
                      f"top-1 {100 * row['top1_agreement']:.2f}%  size x{row['size_ratio']:.3f}  "
                      f"drift {row['drift_slope']:.2f}  decode {row['decode_tok_s']:.0f} tok/s "
                      f"(fp32 {fp_speed:.0f})  [{row['seconds']:.0f}s]", flush=True)
                save(args, rows, curves)  # after every row, so an interrupted run keeps what it measured
    save(args, rows, curves)
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))


def save(args: argparse.Namespace, rows: list, curves: dict) -> None:
    result = {"text": args.text, "calibration": f"first 90% ({args.calib_streams} streams x {args.calib_tokens} tokens)",
              "evaluation": f"last 10% ({args.eval_streams} streams x up to {args.horizon} tokens)",
              "rows": rows, "drift": curves}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"Calibration: {result['calibration']} of `{Path(result['text']).name}`; evaluation: {result['evaluation']}.", "",
             "| model | scheme | loss FP32 | loss Q | increase | KL mean | KL p99 | top-1 | size ratio | drift | min state SNR dB | decode tok/s (FP32) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']}{'' if r['trained'] else ' (untrained)'} | {r['config']} | {r['loss_reference']:.4f} | "
                     f"{r['loss_candidate']:.4f} | {r['loss_increase_pct']:+.3f}% | {r['kl_mean']:.2e} | {r['kl_p99']:.2e} | "
                     f"{100 * r['top1_agreement']:.2f}% | {r['size_ratio']:.3f} | {r['drift_slope']:.2f} | "
                     f"{r['snr_db_state_min']:.1f} | {r['decode_tok_s']:.0f} ({r['decode_tok_s_fp32']:.0f}) |")
    lines += ["", "Drift (KL by position, bucket means):", ""]
    for key, c in result["drift"].items():
        pts = list(zip(c["position"], c["kl"]))[:: max(1, len(c["position"]) // 8)]
        lines.append(f"- {key}: " + ", ".join(f"{p}: {k:.2e}" for p, k in pts))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
