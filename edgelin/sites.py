"""What the quantizable places of a step graph are, as the exporter declared them (docs/FORMAT.md, "sites").

The exporter writes, for every graph, which initializer holds each declared weight (linear layers,
the LM head, the embedding table, norm scales) and which tensor leaves each block. Calibration,
smoothing, GPTQ, sensitivity, quantization and SNR read this record; none of them guesses
structure from node names or op patterns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from edgelin.errors import EdgelinError

WEIGHT_KINDS = ("linear", "lm_head", "embedding")
# ops that read a declared weight as one operand and an activation as the other
PRODUCT_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "Einsum": (0, 1)}


@dataclass(frozen=True)
class WeightSite:
    """One declared weight in one graph."""

    name: str  # the torch module's name, the same in every graph ("blocks.0.mixer.q_proj", "lm_head", "embed")
    kind: str  # "linear", "lm_head" or "embedding"
    initializer: str  # the initializer that holds it in this graph
    axis: int  # its output-channel axis as stored (1 for a MatMul's [K, N], 0 for an embedding's rows)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "initializer": self.initializer, "axis": self.axis}


@dataclass(frozen=True)
class GraphSites:
    """The declared sites of one graph."""

    weights: dict[str, WeightSite]
    norms: dict[str, str]  # norm module name -> its scale's initializer
    blocks: dict[str, str]  # "blocks.3" -> the tensor that leaves block 3 (its residual output)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": {n: w.to_dict() for n, w in self.weights.items()}, "norms": dict(self.norms),
                "blocks": dict(self.blocks)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "GraphSites":
        try:
            weights = {str(n): WeightSite(str(n), str(w["kind"]), str(w["initializer"]), int(w["axis"]))
                       for n, w in d["weights"].items()}
            norms = {str(k): str(v) for k, v in d.get("norms", {}).items()}
            blocks = {str(k): str(v) for k, v in d.get("blocks", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EdgelinError(f"{where}: malformed sites record ({e})") from None
        bad = sorted(w.kind for w in weights.values() if w.kind not in WEIGHT_KINDS)
        if bad:
            raise EdgelinError(f"{where}: unknown weight kind {bad[0]!r} in sites")
        return cls(weights, norms, blocks)

    def linears(self) -> list[WeightSite]:
        """Linear layers and the LM head: the weights a scheme quantizes with an activation input."""
        return [w for w in self.weights.values() if w.kind != "embedding"]


def graph_sites(raw_manifest: dict[str, Any], graph: str) -> GraphSites:
    """The sites the exporter declared for `graph`; a package without them was made by an older edgelin."""
    spec = (raw_manifest.get("graphs") or {}).get(graph) or {}
    if "sites" not in spec:
        raise EdgelinError(f"the {graph} graph has no declared quantization sites (exported by an older edgelin); "
                           "export the model again")
    return GraphSites.from_dict(spec["sites"], f"manifest graph {graph!r}")


def without_float_weights(graphs: dict[str, Any]) -> dict[str, Any]:
    """The manifest's `graphs` for a quantized package: the float weights and norm scales are gone,
    which tensor leaves each block still holds."""
    return {name: {**spec, "sites": {"weights": {}, "norms": {}, "blocks": dict(spec["sites"].get("blocks", {}))}}
            if "sites" in spec else spec for name, spec in graphs.items()}


def weight_readers(proto: onnx.ModelProto, initializer: str) -> list[tuple[onnx.NodeProto, int]]:
    """(node, input index) of every node that reads `initializer`, directly or through an Identity alias."""
    names = {initializer}
    for n in proto.graph.node:
        if n.op_type == "Identity" and n.input[0] in names:
            names.add(n.output[0])
    return [(n, i) for n in proto.graph.node if n.op_type != "Identity" for i, x in enumerate(n.input) if x in names]


def activation_inputs(proto: onnx.ModelProto, site: WeightSite) -> list[tuple[onnx.NodeProto, str]]:
    """(product node, its activation input) for every matrix product that reads `site`'s weight."""
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for node, i in weight_readers(proto, site.initializer):
        pair = PRODUCT_OPS.get(node.op_type)
        if pair and i in pair:
            other = node.input[pair[1 - pair.index(i)]]
            if other not in inits:
                out.append((node, other))
    return out
