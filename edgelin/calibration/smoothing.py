"""Outlier handling: SmoothQuant scaling folded into the norms (on the graph) and a Hadamard
rotation of the residual stream (on the torch model, before export). Both leave the FP model's
function unchanged; they only move outliers where quantization hurts less.

SmoothQuant (Xiao et al. 2023): for a norm output X = x * g (g the RMSNorm weight, an initializer
of a Mul) read only by linear layers W_1..W_n, choose per channel j

    s_j = max|X_j|^alpha / max_i max|W_i[j, :]|^(1 - alpha)

and rewrite g <- g / s, W_i[j, :] <- W_i[j, :] * s_j. Channel maxima come from the calibration
table of both graphs, so the decode and prefill graphs get the same s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgelin.atomic import scratch_dir
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.exporters.weights import save_graphs
from edgelin.runtime.package import read_package, rewrite_package
from edgelin.sites import GraphSites, WeightSite, activation_inputs, graph_sites, weight_readers


def _smoothing_sites(proto: onnx.ModelProto, sites: GraphSites) -> list[tuple[str, str, onnx.NodeProto, list[WeightSite]]]:
    """(norm output tensor, norm scale initializer, the Mul by it, the linear layers that read that output).

    A declared norm is a site when every reader of its output is a declared linear layer stored
    [K, N] that reads it as its activation.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    linear_of: dict[int, WeightSite] = {}  # product node -> the linear it computes, activation-side
    activation_of: dict[int, str] = {}
    for site in sites.linears():
        for node, act in activation_inputs(proto, site):
            if site.axis == 1 and node.op_type == "MatMul":
                linear_of[id(node)], activation_of[id(node)] = site, act
    outputs = {o.name for o in proto.graph.output}
    found = []
    for init in sites.norms.values():
        for mul, _ in weight_readers(proto, init):
            if mul.op_type != "Mul" or mul.output[0] in outputs:
                continue
            users = readers.get(mul.output[0], [])
            if users and all(id(u) in linear_of and activation_of[id(u)] == mul.output[0] for u in users):
                found.append((mul.output[0], init, mul, [linear_of[id(u)] for u in users]))
    return found


def smooth_package(fp_dir: str | Path, out_dir: str | Path, table: CalibrationTable, alpha: float = 0.5,
                   *, force: bool = False) -> tuple[Path, int]:
    """Write a smoothed copy of the FP package at `fp_dir` (same function, flatter activations).

    Returns (out_dir, number of norms smoothed). The calibration table of the copy must be
    measured again: the smoothed activations have new ranges.
    """
    if not 0 < alpha < 1:
        raise EdgelinError(f"smoothing alpha must be in (0, 1), got {alpha}")
    root = Path(fp_dir)
    m = read_package(root)
    protos = {name: onnx.load(str(root / g.file)) for name, g in m.graphs.items()}
    found = {g: _smoothing_sites(p, graph_sites(m.raw, g)) for g, p in protos.items()}
    act: dict[tuple[str, ...], np.ndarray] = {}
    for g, sites in found.items():  # combine channel maxima of both graphs, keyed by the layers read
        for tensor, _, _, linears in sites:
            key = tuple(sorted(w.name for w in linears))
            cmax = np.asarray(table.graphs.get(g, {}).get(tensor, {}).get("channel_absmax", []), np.float64)
            if cmax.size:
                act[key] = np.maximum(act[key], cmax) if key in act else cmax
    scales: dict[tuple[str, ...], np.ndarray] = {}
    count = 0
    for g, proto in protos.items():
        inits = {i.name: i for i in proto.graph.initializer}
        for tensor, gname, mul, linears in found[g]:
            key = tuple(sorted(w.name for w in linears))
            if key not in act:
                continue
            if len(weight_readers(proto, gname)) > 1:  # a scale shared with another norm: make our own copy
                own = f"{tensor}_smoothed_weight"
                proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[gname]), own))
                inits[own] = proto.graph.initializer[-1]
                mul.input[:] = [own if x == gname else x for x in mul.input]
                gname = own
            weights = [numpy_helper.to_array(inits[w.initializer]) for w in linears]
            if key not in scales:
                wmax = np.max([np.abs(w).max(1) for w in weights], 0)
                s = np.power(np.maximum(act[key], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
                scales[key] = np.clip(s, 1e-2, 1e2).astype(np.float32)
            s = scales[key]
            inits[gname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[gname]) / s, gname))
            for w, arr in zip(linears, weights):
                inits[w.initializer].CopyFrom(numpy_helper.from_array((arr * s[:, None]).astype(np.float32), w.initializer))
            count += 1
    with scratch_dir("smooth") as tmp:
        files, weights_index = save_graphs(protos, {name: m.graphs[name].file for name in protos}, tmp)
        return rewrite_package(root, out_dir, files=files, update={"weights": weights_index,
                               "smoothing": {"alpha": alpha, "norms": len(scales)}},
                               drop_fields=("backends",),
                               force=force), count
