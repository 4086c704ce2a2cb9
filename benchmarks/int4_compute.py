"""4-bit layers computed in float (W4A16) or in int8 (W4A8: MatMulNBits at accuracy level 4), side by side.

    .venv/bin/python benchmarks/int4_compute.py [--model gla-10m] [--rounds 5] [--steps 200] [--threads 2]
        [--out out/int4-compute] [--json out/int4-compute.json]

Exports MODEL with `edgelin.export` three times, as `edgelin export` does: FP32, `--int4` (W4A16:
MatMulNBits computing in float on 16-bit activations) and `--w4a8` (MatMulNBits computing in int8,
activations quantized per block as it runs), each calibrated and validated against FP32 on held-out
text by the export itself. Then times batch-1 decode on ONNX Runtime, the three packages interleaved
(A B C A B C, a fresh session each round, `--steps` steps after a 16-token prompt), and prints the
median tok/s, its ratio to FP32 and the validated loss increase of each; writes every round to --json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import edgelin  # noqa: E402
from edgelin.runtime import Session  # noqa: E402

SCHEMES = {"fp32": None, "w4a16": "int4", "w4a8": "w4a8"}


def decode_tok_s(package: Path, steps: int, threads: int) -> float:
    session = Session(package, threads=threads, check_finite=False)
    state = session.new_state(1)
    _, state = session.forward(np.arange(16, dtype=np.int64)[None] % session.vocab_size, state, logits="last")
    token = np.array([[1]], np.int64)
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = session.forward(token, state, logits="last", donate=True)
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gla-10m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/int4-compute")
    ap.add_argument("--json", default="out/int4-compute.json")
    args = ap.parse_args()
    out = Path(args.out) / args.model
    packages, loss = {}, {}
    for name, scheme in SCHEMES.items():
        result = edgelin.export(args.model, out / name, scheme=scheme, force=True)
        packages[name] = result.package
        loss[name] = result.report.get("loss_increase_pct")
        print(f"exported {name}: {packages[name]}", flush=True)
    rounds: dict[str, list[float]] = {name: [] for name in SCHEMES}
    for r in range(args.rounds):
        for name in SCHEMES:
            rounds[name].append(decode_tok_s(packages[name], args.steps, args.threads))
        print(f"round {r + 1}: " + "  ".join(f"{n} {v[-1]:.0f}" for n, v in rounds.items()), flush=True)
    median = {name: statistics.median(v) for name, v in rounds.items()}
    print(f"\n{args.model}, ONNX Runtime, batch 1, {args.threads} threads, median of {args.rounds} interleaved rounds")
    print("| package | decode tok/s | vs FP32 | loss increase (validated) |\n|---|---|---|---|")
    for name in SCHEMES:
        inc = "" if loss[name] is None else f"{loss[name]:+.3f}%"
        print(f"| {name} | {median[name]:.0f} | {median[name] / median['fp32']:.2f}x | {inc} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"model": args.model, "threads": args.threads, "steps": args.steps,
                                           "rounds": rounds, "median_tok_s": median,
                                           "loss_increase_pct": loss}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
