"""How the conversion scales: `edgelin export DIR` and `edgelin export DIR --int8` against llama.cpp's
convert + Q8_0, on random-init transformers checkpoints of growing size.

    .venv/bin/python benchmarks/export_scale.py [--models mamba2-130m lfm2-350m lfm2-1.2b]
        [--work out/export-scale] [--out out/export-scale] [--no-llama] [--no-fp32] [--llama-sdist FILE]

Checkpoints are made as `benchmarks/vs_llamacpp.py` makes them (transformers' own classes, real shapes,
seeded random weights, save_pretrained, a GPT-2 BPE tokenizer). Every step runs as a fresh process;
its wall time and its own peak RSS (VmHWM) are recorded, and peak RSS is also given as a multiple of
the FP32 checkpoint's size on disk. Prints one markdown table and writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import vs_llamacpp as vs  # noqa: E402  (the checkpoints, llama.cpp's tree and the timed runner)

LFM2_1B_LAYERS = vs.LFM2_350M_LAYERS  # LFM2-1.2B: the 350M model's layer pattern, twice the width (12288 -> 8192 after auto-adjust)
SIZES = {
    "mamba2-130m": vs.MODELS["mamba2-130m"],
    "lfm2-350m": vs.MODELS["lfm2-350m"],
    "lfm2-1.2b": vs.ModelSpec("LFM2-1.2B", "Lfm2", {**vs.MODELS["lfm2-350m"].config, "hidden_size": 2048,
                                                    "num_attention_heads": 32, "intermediate_size": 12288,
                                                    "layer_types": LFM2_1B_LAYERS}),
}


def checkpoint_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def steps(checkpoint: Path, out: Path, tree: Path | None, fp32: bool = True) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "edgelin", "export", str(checkpoint), "--force", "-o"]
    runs = {"edgelin export (fp32)": [*cli, str(out / "fp32")]} if fp32 else {}
    runs["edgelin export --int8"] = [*cli, str(out / "int8"), "--int8"]
    if tree is not None:
        llama = vs.llama_steps(checkpoint, out, tree, threads=2)
        runs["llama.cpp convert f32"] = llama["convert fp32"][0]
        runs["llama.cpp quantize Q8_0"] = llama["quantize int8"][0]
    return runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--work", type=Path, default=Path("out/export-scale"))
    ap.add_argument("--out", type=Path, default=Path("out/export-scale"))
    ap.add_argument("--no-llama", action="store_true", help="edgelin's steps only")
    ap.add_argument("--no-fp32", action="store_true", help="skip the FP32 export step (--int8 includes one)")
    ap.add_argument("--llama-sdist", type=Path, default=None)
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tree = vs.llama_tree(args.work, args.llama_sdist)  # its GPT-2 vocab makes the tokenizers
    vocab = vs.read_vocab(tree / "models" / "ggml-vocab-gpt-2.gguf")
    rows = []
    for name in args.models:
        checkpoint = vs.make_checkpoint(SIZES[name], False, args.work / name / "checkpoint", vocab)
        size = checkpoint_bytes(checkpoint)
        for step, cmd in steps(checkpoint, args.work / name, None if args.no_llama else tree, not args.no_fp32).items():
            r = vs.timed(cmd, args.work / name / f"{step.replace(' ', '_')}.log")
            rows.append({"model": SIZES[name].label, "checkpoint_bytes": size, "step": step, "seconds": r["seconds"],
                         "peak_rss_bytes": r["peak_rss_bytes"]})
            print(f"{name} {step}: {r['seconds']:.0f} s, {r['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    print("\n| model | FP32 checkpoint GiB | step | wall s | peak RSS GiB | peak RSS / checkpoint |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['checkpoint_bytes'] / 2**30:.2f} | {r['step']} | {r['seconds']:.0f} | "
              f"{r['peak_rss_bytes'] / 2**30:.2f} | {r['peak_rss_bytes'] / r['checkpoint_bytes']:.2f} |")
    (args.out / "results.json").write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
