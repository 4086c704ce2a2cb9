"""QAT vs PTQ: held-out loss increase of int4 weights, post-training vs after quantization-aware fine-tuning.

From one trained checkpoint (default: the shipped gla-10m) it measures, on the held-out last 10%
of the text, in float32:

  fp          the checkpoint as it is
  ptq         its weights quantized as the export does (edgelin.quantize.primitives, same layers)
  ft + ptq    a control: plain fine-tuning with the same steps and data, then quantized
  qat         fine-tuning with fake quantization (--qat), then quantized the same way

The quantized weights are exactly what an exported package holds (weight-only: the export's
16-bit activations and int16 states are not simulated here). Prints a table, writes JSON.

    python benchmarks/qat_vs_ptq.py --text ../shared/data/tinyshakespeare.txt --json out/qat_vs_ptq.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgelin.models.checkpoint import load_checkpoint  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.models.zoo import shipped_checkpoint  # noqa: E402
from edgelin.train import ByteData, QATScheme, TrainConfig, evaluate, quantize_weights_, train  # noqa: E402


def quantized_loss(model, scheme, data, cfg, device) -> float:
    q = copy.deepcopy(model).float()
    quantize_weights_(q, scheme)
    return evaluate(q.to(device), data, cfg, amp=False)


def training_setting(spec: str, key: str) -> float | None:
    """A setting the checkpoint was trained with (dropout, ema): fine-tuning with less dropout makes
    these models overfit at once."""
    for run_dir in (Path(spec), shipped_checkpoint(spec)):
        log = run_dir / "train_log.json" if run_dir else None
        if log and log.is_file():
            return json.loads(log.read_text()).get("train_config", {}).get(key)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gla-10m", help="checkpoint dir or zoo name with shipped weights")
    ap.add_argument("--text", required=True)
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-5, help="low: any fine-tune of these models on the same text overfits")
    ap.add_argument("--dropout", type=float, default=None,
                    help="fine-tuning dropout (default: the model's training dropout from its train_log.json, else 0.2)")
    ap.add_argument("--ema", type=float, default=None,
                    help="weight average during fine-tuning (default: the checkpoint's own, from its train_log.json)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds per fine-tuning run (0 = none)")
    ap.add_argument("--eval-windows", type=int, default=0, help="held-out windows per evaluation (0 = all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=Path("out/qat_vs_ptq.json"))
    args = ap.parse_args()

    if args.dropout is None:
        trained = training_setting(args.model, "dropout")
        args.dropout = 0.2 if trained is None else trained
    if args.ema is None:
        args.ema = training_setting(args.model, "ema") or 0.0
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    loaded = load_model(args.model)
    base = loaded.model.float()
    data = ByteData.from_file(args.text, args.seq_len)
    scheme = QATScheme.parse(f"int{args.bits}", args.group_size)
    ecfg = TrainConfig(seq_len=args.seq_len, eval_windows=args.eval_windows)
    rows: dict[str, dict] = {}

    fp = evaluate(copy.deepcopy(base).to(device), data, ecfg, amp=False)
    rows["fp"] = {"loss": fp}
    rows["ptq"] = {"loss": quantized_loss(base, scheme, data, ecfg, device)}
    print(f"fp {fp:.4f}  ptq {rows['ptq']['loss']:.4f}", flush=True)

    for name, qat in (("ft + ptq", None), ("qat", scheme)):
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                          warmup=min(50, args.steps // 10), dropout=args.dropout, eval_every=max(1, args.steps // 4),
                          time_budget=args.time_budget, seed=1, qat=qat, ema=args.ema, eval_windows=args.eval_windows,
                          keep_state=False)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            result = train(copy.deepcopy(base), data, cfg, tmp, device=str(device.type), title=name)
            tuned = load_checkpoint(Path(tmp) / "best")
        rows[name] = {"loss": quantized_loss(tuned, scheme, data, ecfg, device), "fp_loss_after": evaluate(tuned.to(device), data, ecfg, amp=False),
                      "steps": result.steps_done, "best_step": result.best_step, "seconds": round(time.time() - t0, 1)}
        print(f"{name}: {rows[name]}", flush=True)

    # The int4 increase over the float model it came from; for QAT that is the plain fine-tune with the
    # same steps, data and seed (QAT's own float weights are never shipped), so extra training cancels out.
    refs = {"ptq": ("fp", fp), "ft + ptq": ("ft", rows["ft + ptq"]["fp_loss_after"]), "qat": ("ft", rows["ft + ptq"]["fp_loss_after"])}
    rows["fp"].update(increase=0.0, increase_pct=0.0)
    for name, (ref_name, ref) in refs.items():
        rows[name].update(reference=ref_name, reference_loss=ref, increase=rows[name]["loss"] - ref,
                          increase_pct=100 * (rows[name]["loss"] - ref) / ref)
    label = f"int{args.bits}" + (f" g{args.group_size}" if args.bits == 4 else "")
    print(f"\n{loaded.name}: held-out loss (nats/byte, float32), weights {label}, {len(data.val):,} held-out bytes")
    print(f"{'':<10} {'loss':>8} {'float ref':>10} {'increase':>9} {'%':>7}")
    for name, row in rows.items():
        ref = row.get("reference_loss", row["loss"])
        print(f"{name:<10} {row['loss']:8.4f} {ref:10.4f} {row['increase']:+9.4f} {row['increase_pct']:+6.2f}%")
    print("float ref: the model before quantization (ptq: the checkpoint; ft + ptq and qat: the plain fine-tune)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": loaded.name, "scheme": {"bits": args.bits, "group_size": args.group_size, "head_int8": True},
                                     "settings": {k: str(v) for k, v in vars(args).items()}, "device": str(device),
                                     "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
