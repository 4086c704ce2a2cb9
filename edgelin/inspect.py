"""What is inside a package: graphs, inputs/outputs, states with their bytes, op histograms."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgelin.runtime.package import package_size_bytes, read_package


def _shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def inspect_package(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of the package at `path` (checksums verified first)."""
    manifest = read_package(path)
    graphs = {}
    for name, spec in manifest.graphs.items():
        proto = onnx.load(str(Path(path) / spec.file), load_external_data=False)
        weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
        graphs[name] = {
            "file": spec.file,
            "tokens": spec.tokens,
            "inputs": [(v.name, _shape(v), _dtype(v)) for v in proto.graph.input],
            "outputs": [(v.name, _shape(v), _dtype(v)) for v in proto.graph.output],
            "ops": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
            "weight_elements": weights,
        }
    states = [
        {"name": s.input, "kind": s.kind, "layer": s.layer, "shape": list(s.shape), "dtype": s.dtype,
         "bytes_per_sequence": int(np.prod(s.shape_for(1))) * s.np_dtype.itemsize}
        for s in manifest.states
    ]
    return {
        "path": str(path),
        "format_version": manifest.format_version,
        "producer": manifest.producer,
        "source_layout": manifest.raw.get("source_layout", "edgelin"),
        "max_context": manifest.raw.get("max_context"),
        "architecture": manifest.architecture,
        "vocab_size": manifest.vocab_size,
        "tokenizer": manifest.tokenizer,
        "precision": manifest.precision,
        "graphs": graphs,
        "states": states,
        "state_bytes_per_sequence": sum(s["bytes_per_sequence"] for s in states),
        "size_bytes": package_size_bytes(path),
    }
