"""Every back end x FP32 / INT8 / INT4 on the reference models and zoo gla-130m: decode tok/s, RSS, bandwidth floor.

    .venv/bin/python benchmarks/backends.py [--models gla-10m gla-130m] [--threads 2] [--out out/bench-backends]
        [--rss-tokens 20000]

Reference models come from edgelin/models/trained/NAME when shipped (trained weights), else the zoo's
seeded random init (speed does not depend on the values). INT8 is W8A8 (INT16 states), plus
`int8-fs`, W8A8 with float states (`--int8 --state fp32`, the fastest INT8 decode on CPU); INT4 is
W4A16 in ONNX Runtime's MatMulNBits form, plus its standard-ONNX QDQ form for OpenVINO. Results go
to OUT/results.json and a markdown table on stdout (docs/BENCHMARKS.md holds a recorded run).
The RSS soak generates --rss-tokens tokens on the fastest INT8 back end of the last model and
samples the process RSS every 1,000 tokens.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

BACKENDS = ["ort", "openvino", "openvino-stateful", "tvm"]


def build(name: str, root: Path, prefill: int, log, rebuild: tuple[str, ...] = (),
          backends: tuple[str, ...] = tuple(BACKENDS)) -> dict[str, Path]:
    """FP32 / INT8 / INT4 (+ INT4 QDQ) packages of `name`, compiled for OpenVINO and TVM where asked and possible."""
    from edgelin.calibration import calibrate_package, default_text
    from edgelin.exporters.openvino import export_openvino
    from edgelin.exporters.package import export_package
    from edgelin.exporters.tvm import export_tvm
    from edgelin.models.loading import load_model
    from edgelin.quantize.package import quantize_package
    from edgelin.quantize.schemes import W4A16, W8A8, Int4Format, StatePrecision

    fp = root / name / "fp32"
    if not (fp / "manifest.json").exists():
        export_package(load_model(name).model, fp, prefill_tokens=prefill, force=True)
    pkgs = {"fp32": fp}
    table = None
    schemes = (("int8", W8A8()), ("int8-fs", W8A8(state=StatePrecision.FP32)), ("int4", W4A16()),
               ("int4-qdq", W4A16(int4_format=Int4Format.QDQ)))
    for prec, scheme in schemes:
        out = root / name / prec
        if not (out / "manifest.json").exists():
            table = table or calibrate_package(fp, default_text()[:50000], streams=2, tokens=512)
            quantize_package(fp, out, scheme, table, force=True)
        pkgs[prec] = out
    for prec, pkg in pkgs.items():
        compiled = json.loads((pkg / "manifest.json").read_text()).get("backends", {})
        for be, fn in (("openvino", export_openvino), ("tvm", export_tvm)):
            if (be in compiled and be not in rebuild) or not any(b.split("-")[0] == be for b in backends):
                continue
            start = time.time()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn(pkg)
                log(f"{name} {prec}: {be} compiled in {time.time() - start:.0f}s")
            except Exception as e:  # record what a back end cannot take, go on
                log(f"{name} {prec}: {be} FAILED: {str(e).splitlines()[0][:200]}")
    return pkgs


def rss_soak(pkg: Path, backend: str, tokens: int, threads: int) -> list[tuple[int, int]]:
    """(tokens generated, RSS bytes) every 1,000 tokens of greedy generation, in a fresh process."""
    code = f"""
import json, numpy as np
from edgelin.runtime import Session, generate
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
s = Session({str(pkg)!r}, backend={backend!r}, threads={threads})
out = []
for i, _ in enumerate(generate(s, [72, 105], {tokens}), 1):
    if i % 1000 == 0:
        out.append((i, rss()))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    """The results as a markdown table (one row per model x precision x back end)."""
    rows = ["| model | precision | back end | decode tok/s | ms/token p50 / p90 | prefill tok/s | peak RSS MiB "
            "| package on disk MiB | weights read / token MiB | copy GB/s | floor tok/s | fraction of floor "
            "| read GB/s | fraction of read floor "
            "| load avg before / after | torch eager fp32 decode tok/s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    torch = {r["model"]: r["torch_eager_fp32"]["decode_tokens_per_s"] for r in results["runs"] if "torch_eager_fp32" in r}
    for r in results["runs"]:
        rows.append(f"| {r['model']} | {r['precision_label']} | {r['backend']} | {r['decode_tokens_per_s']:.0f} "
                    f"| {r['ms_per_token_p50']:.2f} / {r['ms_per_token_p90']:.2f} | {r['prefill_tokens_per_s']:.0f} "
                    f"| {r['peak_rss_bytes'] / 2**20:.0f} | {r['bytes_on_disk'] / 2**20:.0f} "
                    f"| {r['weight_bytes_per_token'] / 2**20:.1f} | {r['copy_bandwidth_bytes_per_s'] / 1e9:.1f} "
                    f"| {r['bandwidth_floor_tokens_per_s']:.0f} | {r['fraction_of_floor']:.0%} "
                    f"| {r['read_bandwidth_bytes_per_s'] / 1e9:.1f} | {r['fraction_of_read_floor']:.0%} "
                    f"| {r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} "
                    f"| {torch.get(r['model'], float('nan')):.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gla-10m", "hybrid-10m", "gla-130m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=16)
    ap.add_argument("--rss-tokens", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("out/bench-backends"))
    ap.add_argument("--markdown", action="store_true", help="Only print OUT/results.json as a markdown table.")
    ap.add_argument("--backends", nargs="+", default=BACKENDS, help="Back ends to run (their old rows are replaced).")
    ap.add_argument("--rebuild", nargs="*", default=[], help="Compile these back ends again (openvino, tvm).")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads((args.out / "results.json").read_text())))
        return
    from edgelin.bench import bench_package

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": [], "log": []}

    def log(msg: str) -> None:
        print(msg, flush=True)
        results["log"].append(msg)

    for name in args.models:
        pkgs = build(name, args.out, args.prefill, log, tuple(args.rebuild), tuple(args.backends))
        results["runs"] = [r for r in results["runs"] if not (r["model"] == name and r["backend"] in args.backends)]
        baseline_done = any(r["model"] == name and "torch_eager_fp32" in r for r in results["runs"])
        for prec, pkg in pkgs.items():
            for backend in args.backends:
                if prec == "int4-qdq" and backend == "ort":
                    continue  # ORT runs the MatMulNBits form
                try:
                    r = bench_package(pkg, backend=backend, threads=args.threads, decode_tokens=args.decode_tokens,
                                      trust_native_code=True,  # the packages were compiled by this script
                                      baseline=not baseline_done)
                except Exception as e:
                    log(f"{name} {prec} {backend}: {str(e).splitlines()[0][:200]}")
                    continue
                baseline_done = baseline_done or "torch_eager_fp32" in r
                r.update(model=name, precision_label=prec)
                results["runs"].append(r)
                log(f"{name:10s} {prec:8s} {backend:18s} decode {r['decode_tokens_per_s']:8.1f} tok/s  "
                    f"floor {r['bandwidth_floor_tokens_per_s']:8.1f}  fraction {r['fraction_of_floor']:.0%} (read floor {r['fraction_of_read_floor']:.0%})  "
                    f"RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
                results_path.write_text(json.dumps(results, indent=1))
    if args.rss_tokens and results["runs"]:
        last = [r for r in results["runs"] if r["model"] == args.models[-1] and r["precision_label"].startswith("int8")]
        if last:
            best = max(last, key=lambda r: r["decode_tokens_per_s"])
            samples = rss_soak(Path(best["package"]), best["backend"], args.rss_tokens, args.threads)
            results["rss_soak"] = {"model": best["model"], "backend": best["backend"], "samples": samples}
            log(f"RSS soak {best['model']} {best['precision_label']} {best['backend']}: " +
                ", ".join(f"{n}:{b / 2**20:.1f}MiB" for n, b in samples))
    results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
