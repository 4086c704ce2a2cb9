"""Mixed precision: per-layer sensitivity and the greedy search behind `--max-loss-increase`.

Sensitivity of a layer = the loss increase (%) when that layer alone is quantized by the scheme
(every other layer and every state in float). The search starts from the whole scheme and, while
the loss increase on the calibration streams is above the budget, lifts the most sensitive layer
still at the scheme's precision one step (int4 -> int8, int8 -> fp32); only when every layer has
taken a step does a layer take a second one.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgelin.calibration.probe import Probe
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.qdq import quantize_graph, state_qparams
from edgelin.quantize.schemes import LayerPrecision, QuantScheme, StatePrecision
from edgelin.runtime.package import read_package
from edgelin.sites import graph_sites

UP = {LayerPrecision.INT4: LayerPrecision.INT8, LayerPrecision.INT8: LayerPrecision.FP32}


def prefill_loss(probe: Probe, ids: np.ndarray) -> float:
    """Mean next-token NLL of a probe's prefill graph over `ids` [B, T] (states carried, zero-started)."""
    C, T = probe.chunk, ids.shape[1]
    pos, total, count = 0, 0.0, 0

    def nll(_graph: str, _feeds: dict, out: dict[str, np.ndarray]) -> None:
        nonlocal pos, total, count
        lg = (out["logits"][:, :-1] if pos + C >= T else out["logits"]).astype(np.float64)
        tgt = ids[:, pos + 1:pos + 1 + lg.shape[1]]
        lg = lg - lg.max(-1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(lp, tgt[..., None], -1).sum())
        count += tgt.size
        pos += C

    probe.prefill_stream(ids, nll)
    if count == 0:
        raise EdgelinError(f"need at least one prefill chunk ({C} tokens) of text to measure a loss")
    return total / count


class LossProbe:
    """Quantize the prefill graph of an FP package in memory under any scheme and measure its loss."""

    def __init__(self, fp_dir: str | Path, table: CalibrationTable, ids: np.ndarray):
        root = Path(fp_dir)
        m = read_package(root)
        self.root, self.entries, self.table, self.ids = root, m.raw["states"], table, ids
        self.sites = graph_sites(m.raw, "prefill")
        self.proto = onnx.load(str(root / m.graphs["prefill"].file))
        self.fp_loss = prefill_loss(Probe(root, graphs={"prefill": self.proto}), ids)

    def layers(self) -> list[str]:
        return sorted(w.name for w in self.sites.linears())

    def increase_pct(self, scheme: QuantScheme) -> float:
        sq = state_qparams(self.entries, self.table, scheme)
        q, _ = quantize_graph(self.proto, "prefill", scheme, self.table, sq, self.entries, self.sites)
        states = [{**s, "dtype": sq[s["input"]]["dtype"]} if s["input"] in sq else s for s in self.entries]
        probe = Probe(self.root, graphs={"prefill": q}, states=states)
        return 100.0 * (prefill_loss(probe, self.ids) - self.fp_loss) / self.fp_loss


def layer_sensitivity(probe: LossProbe, scheme: QuantScheme,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """layer -> loss increase (%) when only that layer is quantized (states float)."""
    layers = probe.layers()
    base = replace(scheme, state=StatePrecision.FP32, layers={})
    out = {}
    for i, layer in enumerate(layers):
        only = {other: LayerPrecision.FP32 for other in layers if other != layer}
        out[layer] = probe.increase_pct(base.with_layers(only))
        if progress:
            progress(i + 1, len(layers))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def mixed_precision(probe: LossProbe, scheme: QuantScheme, budget_pct: float, sensitivity: dict[str, float],
                    progress: Callable[[float], None] | None = None) -> tuple[QuantScheme, float]:
    """Lift the most sensitive layers until the loss increase is <= `budget_pct`.

    Returns (the scheme with its per-layer overrides, the loss increase it reached).
    """
    layers = dict(scheme.layers)
    current = scheme.with_layers(layers)
    loss = probe.increase_pct(current)
    order = list(sensitivity)
    while loss > budget_pct:
        # one step for every layer, most sensitive first, before any layer takes a second step
        lift = next((l for l in order if current.precision_of(l) == scheme.precision_of(l) in UP), None) \
            or next((l for l in order if current.precision_of(l) in UP), None)
        if lift is None:
            break
        layers[lift] = UP[current.precision_of(lift)]
        current = scheme.with_layers(layers)
        loss = probe.increase_pct(current)
        if progress:
            progress(loss)
    return current, loss
