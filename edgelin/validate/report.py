"""A validation result to report.json, report.md and PNG plots in one directory."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgelin.atomic import atomic_dir, scratch_dir
from edgelin.errors import EdgelinError


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Fidelity: {Path(r['candidate']).name} vs {Path(r['reference']).name}", "",
        f"Scheme: `{r['precision'].get('scheme', 'fp32')}`; {r['streams']} streams x {r['horizon']} tokens "
        f"({r['tokens']} tokens).", "",
        *([f"Token budgets ({r['budget']['parameters']:,} parameters, docs/DESIGN.md): "
           f"{r['budget']['calibration']['rule']}, one chunk in {r['budget']['calibration']['decode_every']} "
           f"through the decode graph; {r['budget']['validation']['rule']}.", ""] if "budget" in r else []),
        "| metric | reference | candidate |", "|---|---|---|",
        f"| loss (nats/token) | {r['loss_reference']:.4f} | {r['loss_candidate']:.4f} |",
        f"| perplexity | {r['perplexity_reference']:.3f} | {r['perplexity_candidate']:.3f} |",
        f"| size (bytes) | {r['size_bytes_reference']:,} | {r['size_bytes_candidate']:,} |", "",
        f"- loss increase: **{r['loss_increase_pct']:+.3f}%**",
        f"- KL(FP || Q): mean {r['kl_mean']:.5f}, p99 {r['kl_p99']:.5f}",
        f"- top-1 agreement: {100 * r['top1_agreement']:.2f}%",
        f"- size ratio: {r['size_ratio']:.3f}",
        f"- drift (KL last quarter / first quarter): {r['drift_slope']:.2f}", "",
        "## SNR per layer output (dB)", "", "| layer | SNR |", "|---|---|",
        *(f"| {k} | {_db(v)} |" for k, v in r["snr_db_layer"].items()), "",
        "## SNR per state after the last token (dB)", "", "| state | SNR |", "|---|---|",
        *(f"| {k} | {_db(v)} |" for k, v in r["snr_db_state"].items()), "",
        "## Drift: KL by position", "", "![drift](drift.png) ![snr](snr.png)", "",
        "| up to position | KL | top-1 agreement |", "|---|---|---|",
        *(f"| {p} | {k:.5f} | {100 * a:.2f}% |" for p, k, a in zip(r["drift"]["position"], r["drift"]["kl"], r["drift"]["top1_agreement"])),
    ]
    return "\n".join(lines) + "\n"


def plots(r: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(r["drift"]["position"], r["drift"]["kl"], marker=".")
    ax.set_xlabel("position (tokens)")
    ax.set_ylabel("KL(FP || Q), nats")
    ax.set_title("drift over the stream")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=100)
    plt.close(fig)
    paths.append(out / "drift.png")
    items = [(k, v) for k, v in {**r["snr_db_layer"], **r["snr_db_state"]}.items() if math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("SNR (dB)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "snr.png", dpi=100)
    plt.close(fig)
    paths.append(out / "snr.png")
    return paths


def report_json(r: dict[str, Any]) -> str:
    """A validation result as JSON text (numpy scalars written as floats)."""
    return json.dumps(r, indent=1, default=float) + "\n"


def report_files(r: dict[str, Any]) -> dict[str, bytes]:
    """report.json, report.md and the PNGs as name -> bytes (for a package's report/ folder)."""
    with scratch_dir("report") as tmp:
        pngs = plots(r, tmp)
        files = {p.name: p.read_bytes() for p in pngs}
    files["report.json"] = report_json(r).encode()
    files["report.md"] = markdown(r).encode()
    return files


def write_report(r: dict[str, Any], out_dir: str | Path) -> Path:
    """Write report.json, report.md, drift.png and snr.png into `out_dir` (created)."""
    out = Path(out_dir)
    files = report_files(r)
    if out.is_dir() and not {p.name for p in out.iterdir()} <= set(files):
        raise EdgelinError(f"{out} holds files that are not part of a report; refusing to replace it")
    with atomic_dir(out, force=True, what="report") as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    return out
