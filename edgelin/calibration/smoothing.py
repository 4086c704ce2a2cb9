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

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.exporters.weights import save_graphs
from edgelin.quantize.qdq import canonical_layer_names, is_weight_matmul
from edgelin.runtime.package import read_package, write_package


def _sites(proto: onnx.ModelProto, names: dict[str, str]) -> list[tuple[str, onnx.NodeProto, list[onnx.NodeProto]]]:
    """(norm output tensor, the Mul node with the norm weight, the weight MatMuls that read it).

    The weight MatMuls must be the only readers, each reading the tensor as its activation.
    """
    inits = {i.name: i for i in proto.graph.initializer}
    # the exporter stores equal weights once and aliases the copies through Identity nodes
    alias = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    graph_outputs = {o.name for o in proto.graph.output}
    sites = []
    for n in proto.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2:
            continue
        g = next((x for x in n.input if len(getattr(inits.get(alias.get(x, x)), "dims", ())) == 1), None)
        if g is None:
            continue
        users = consumers.get(n.output[0], [])
        if users and n.output[0] not in graph_outputs and all(is_weight_matmul(u, inits) and u.input[0] == n.output[0] for u in users):
            sites.append((n.output[0], n, users))
    return sites


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
    names = canonical_layer_names(protos)
    found = {g: _sites(p, names[g]) for g, p in protos.items()}
    act: dict[tuple[str, ...], np.ndarray] = {}
    for g, sites in found.items():  # combine channel maxima of both graphs, keyed by the layers read
        for tensor, _, users in sites:
            key = tuple(sorted(names[g][u.name] for u in users))
            cmax = np.asarray(table.graphs.get(g, {}).get(tensor, {}).get("channel_absmax", []), np.float64)
            if cmax.size:
                act[key] = np.maximum(act[key], cmax) if key in act else cmax
    scales: dict[tuple[str, ...], np.ndarray] = {}
    count = 0
    for g, proto in protos.items():
        inits = {i.name: i for i in proto.graph.initializer}
        for tensor, mul, users in found[g]:
            key = tuple(sorted(names[g][u.name] for u in users))
            if key not in act:
                continue
            alias = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits}
            gname = next(x for x in mul.input if len(getattr(inits.get(alias.get(x, x)), "dims", ())) == 1)
            if gname in alias or sum(gname in n.input for n in proto.graph.node) > 1:  # shared: make our own copy
                own = f"{tensor}_smoothed_weight"
                proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[alias.get(gname, gname)]), own))
                inits[own] = proto.graph.initializer[-1]
                mul.input[:] = [own if x == gname else x for x in mul.input]
                gname = own
            weights = [numpy_helper.to_array(inits[u.input[1]]) for u in users]
            if key not in scales:
                wmax = np.max([np.abs(w).max(1) for w in weights], 0)
                s = np.power(np.maximum(act[key], 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
                scales[key] = np.clip(s, 1e-2, 1e2).astype(np.float32)
            s = scales[key]
            inits[gname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[gname]) / s, gname))
            for u, w in zip(users, weights):
                inits[u.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), u.input[1]))
            count += 1
    with tempfile.TemporaryDirectory(prefix="edgelin-smooth-") as tmp:
        files, weights = save_graphs(protos, {name: m.graphs[name].file for name in protos}, Path(tmp))
        for name in m.files:
            files.setdefault(name, root / name)
        manifest = {k: v for k, v in m.raw.items() if k not in ("files", "format_version")}
        manifest["weights"] = weights
        manifest["smoothing"] = {"alpha": alpha, "norms": len(scales)}
        return write_package(out_dir, files, manifest, force=force), count
