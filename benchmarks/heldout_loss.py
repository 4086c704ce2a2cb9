"""Held-out loss of each shipped model (edgelin/models/trained/*) on the last 10% of a text, on the CPU.

Two numbers per model, in nats per byte (= per character for ASCII text such as tinyshakespeare):

  windows   every non-overlapping 256-byte window of the held-out text, each from a zero state,
            loss averaged over all positions: the protocol of nanoGPT's validation loss (1.4697
            for its 10.7M-parameter transformer on this split) and of the training log
  stream    the held-out text read once from start to end with the state carried across chunks:
            what a recurrent model gives when it keeps its state

    python benchmarks/heldout_loss.py --text ../shared/data/tinyshakespeare.txt --json out/heldout_loss.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgelin.models.checkpoint import load_checkpoint  # noqa: E402
from edgelin.train import ByteData, TrainConfig, evaluate  # noqa: E402


@torch.no_grad()
def stream_loss(model, val: torch.Tensor, chunk: int = 256, streams: int = 8) -> float:
    """Cut the held-out bytes into `streams` contiguous pieces, read each once with its state carried."""
    n = (len(val) - 1) // streams
    x = torch.stack([val[i * n : i * n + n] for i in range(streams)]).long()
    y = torch.stack([val[i * n + 1 : i * n + n + 1] for i in range(streams)]).long()
    state, total = None, 0.0
    for s in range(0, n, chunk):
        logits, state = model(x[:, s : s + chunk], state)
        total += F.cross_entropy(logits.flatten(0, 1), y[:, s : s + chunk].flatten(), reduction="sum").item()
    return total / y.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--models", nargs="*", type=Path, help="checkpoint dirs (default: every edgelin/models/trained/*)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--no-stream", action="store_true", help="skip the carried-state number")
    ap.add_argument("--json", type=Path, default=Path("out/heldout_loss.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or sorted(p.parent for p in (ROOT / "edgelin" / "models" / "trained").glob("*/model.safetensors"))
    if not models:
        sys.exit("no models: edgelin/models/trained/*/model.safetensors not found and no --models given")
    data = ByteData.from_file(args.text, args.seq_len)
    cfg = TrainConfig(seq_len=args.seq_len, eval_batch_size=16)
    rows = []
    for path in models:
        model = load_checkpoint(path).float().eval()
        t0 = time.time()
        windows = evaluate(model, data, cfg, amp=False)
        stream = None if args.no_stream else stream_loss(model, data.val, args.seq_len)
        log = path / "train_log.json"
        logged = json.loads(log.read_text()).get("best_val") if log.exists() else None
        rows.append({"model": path.name, "parameters": model.num_parameters(), "windows": windows, "stream": stream,
                     "training_log_best": logged, "seconds": round(time.time() - t0, 1)})
        print(f"{path.name}: windows {windows:.4f}" + ("" if stream is None else f", stream {stream:.4f}"), flush=True)
    print(f"\nheld-out loss, nats/byte, last 10% of {args.text} ({len(data.val):,} bytes), float32 on CPU")
    print(f"{'model':<14} {'params':>8} {'windows':>8} {'stream':>8} {'train log':>9}")
    for r in rows:
        stream = "-" if r["stream"] is None else f"{r['stream']:.4f}"
        logged = "-" if r["training_log_best"] is None else f"{r['training_log_best']:.4f}"
        print(f"{r['model']:<14} {r['parameters'] / 1e6:7.2f}M {r['windows']:8.4f} {stream:>8} {logged:>9}")
    print(f"{'nanoGPT 10.7M':<14} {'10.70M':>8} {1.4697:8.4f} {'-':>8} {'-':>9}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"text": args.text, "val_bytes": len(data.val), "seq_len": args.seq_len, "rows": rows,
                                     "reference": {"nanogpt_10.7M_transformer": 1.4697}}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
