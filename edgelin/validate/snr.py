"""SNR (dB) of a candidate's tensors against the reference: per state (through Session) and per
layer output (the declared block outputs of the prefill graph, read through the probe runner)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelin.calibration.probe import Probe
from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest, StateSpec
from edgelin.sites import graph_sites


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - cand) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def dequantize_state(spec_raw: dict, a: np.ndarray) -> np.ndarray:
    q = spec_raw.get("quant")
    if not q:
        return a.astype(np.float32)
    return (a.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])


def layer_snr(ref_dir: Path, ref_m: Manifest, cand_dir: Path, cand_m: Manifest, ids: np.ndarray, chunks: int = 8) -> dict[str, float]:
    """SNR of every block output (as the exporter declared them), prefill graph, over the first
    `chunks` chunks of `ids` [B, T]; both packages run chunk by chunk, side by side."""
    if "prefill" not in ref_m.graphs or "prefill" not in cand_m.graphs:
        return {}
    try:
        ref_blocks, cand_blocks = (graph_sites(m.raw, "prefill").blocks for m in (ref_m, cand_m))
    except EdgelinError:
        return {}  # a package from an older edgelin: no declared block outputs
    names = sorted(set(ref_blocks) & set(cand_blocks), key=lambda s: int(s.split(".")[1]))
    pairs = [(Probe(root, extra={"prefill": [blocks[k] for k in names]}, only=("prefill",)), blocks)
             for root, blocks in ((ref_dir, ref_blocks), (cand_dir, cand_blocks))]
    states = [probe.new_state(ids.shape[0]) for probe, _ in pairs]
    signal, noise = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    C = pairs[0][0].chunk
    for c in range(min(chunks, ids.shape[1] // C)):
        outs = []
        for i, (probe, blocks) in enumerate(pairs):
            out, states[i] = probe.run("prefill", ids[:, c * C:(c + 1) * C], states[i])
            outs.append({k: out[blocks[k]] for k in names})
        for k in names:
            r = outs[0][k].astype(np.float64)
            signal[k] += float(np.sum(r ** 2))
            noise[k] += float(np.sum((r - outs[1][k]) ** 2))
    return {k: (float(10 * np.log10(signal[k] / noise[k])) if noise[k] > 0 else float("inf")) for k in names}


def state_snr(ref_specs: list[StateSpec], cand_raw: list[dict], ref_state: dict, cand_state: dict) -> dict[str, float]:
    raw = {s["input"]: s for s in cand_raw}
    return {s.input: snr_db(ref_state[s.input], dequantize_state(raw[s.input], cand_state[s.input])) for s in ref_specs}
