"""The torch side of the sites record (edgelin/sites.py): which weights a model declares, and where
each one lands in a traced graph.

A module declares its weights by what it is: an `nn.Linear` is a linear layer (`lm_head` the LM
head), an `nn.Embedding` an embedding table, an `RMSNorm` a norm scale. A module whose weights are
used otherwise (an Einsum, a batched MatMul) declares them with `quant_weights() -> {attribute:
output-channel axis}`. The tracer leaves parameters as graph inputs named after them, and folding
them into the graph's constants (exporters/fold.py) records which constant holds which parameter,
as stored or transposed.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from torch import nn

from edgelin.errors import EdgelinError
from edgelin.models.layers.norm import GatedRMSNorm, RMSNorm
from edgelin.sites import PRODUCT_OPS, GraphSites, WeightSite, weight_readers


@dataclass(frozen=True)
class DeclaredWeight:
    name: str
    kind: str  # "linear", "lm_head", "embedding"
    param: nn.Parameter
    axis: int  # output-channel axis in the parameter's own layout


def declared_weights(model: nn.Module) -> list[DeclaredWeight]:
    """Every quantizable weight of `model`, named after its module."""
    out = []
    for fqn, module in model.named_modules():
        custom = getattr(module, "quant_weights", None)
        if callable(custom):
            out.extend(DeclaredWeight(f"{fqn}.{attr}", "linear", getattr(module, attr), axis) for attr, axis in custom().items())
        elif isinstance(module, nn.Embedding):
            out.append(DeclaredWeight(fqn, "embedding", module.weight, 0))
        elif isinstance(module, nn.Linear):
            out.append(DeclaredWeight(fqn, "lm_head" if fqn == "lm_head" else "linear", module.weight, 0))
    return out


def declared_norms(model: nn.Module) -> dict[str, nn.Parameter]:
    """Plain RMSNorm scales (the gated output norms multiply by a gate after the scale: no smoothing site)."""
    return {fqn: m.weight for fqn, m in model.named_modules() if isinstance(m, RMSNorm) and not isinstance(m, GatedRMSNorm)}


def parameter_inputs(model: nn.Module, prefix: str = "model.") -> dict[int, list[str]]:
    """id(parameter) -> the graph inputs a tracer may name it by (a tied parameter has several names)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(prefix + name)
    return names


def record_sites(proto: onnx.ModelProto, graph: str, weights: list[DeclaredWeight], norms: dict[str, nn.Parameter],
                 inputs: dict[int, list[str]], found: dict[str, list[tuple[str, bool]]], blocks: dict[str, str]) -> GraphSites:
    """The sites record of one traced graph: `found` says where each parameter input landed (exporters/fold.py)."""

    def landed(param: nn.Parameter) -> list[tuple[str, bool]]:
        return [hit for name in inputs[id(param)] for hit in found.get(name, [])]

    def read_by(name: str) -> set[str]:
        return {n.op_type for n, _ in weight_readers(proto, name)}

    sites: dict[str, WeightSite] = {}
    for w in weights:
        candidates = landed(w.param)
        if w.kind == "embedding":
            hits = [(n, tr) for n, tr in candidates if not tr and "Gather" in read_by(n)]
        else:  # a matrix product reads it; MatMul's [K, N] (transposed) first
            hits = sorted(((n, tr) for n, tr in candidates if read_by(n) & set(PRODUCT_OPS)), key=lambda h: not h[1])
        if not hits:
            raise EdgelinError(f"declared weight {w.name} is not read as a weight in the traced {graph} graph "
                               f"(a module that uses its weight otherwise must declare it with quant_weights())")
        name, transposed = hits[0]
        axis = (w.param.ndim - 1 - w.axis) if transposed else w.axis
        sites[w.name] = WeightSite(w.name, w.kind, name, axis)
    norm_inits = {}
    for fqn, param in norms.items():
        hits = [n for n, tr in landed(param) if not tr and "Mul" in read_by(n)]
        if hits:
            norm_inits[fqn] = hits[0]
    return GraphSites(sites, norm_inits, blocks)
