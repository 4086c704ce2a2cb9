"""`check_package`: every place a package's step graphs break a target's rules (edgelin.exporters.profiles).

A violation names the graph, the node, its op, the rule (op, dtype, dynamic) and the detail. Rules:
- op: the node's op type is not on the target's list;
- dynamic: a graph input or output has a dimension that is not a number;
- dtype: for targets with quantized activations, a compute node reads a float tensor that is not
  the output of a DequantizeLinear from an allowed integer type, a float graph output is not
  written by a DequantizeLinear, or a QuantizeLinear writes a type the target lacks; weights
  dequantized from a type outside the weight list; initializers of a type the target's importer
  cannot read.

Data-movement nodes (Reshape, Transpose, Slice, Gather, Concat, ...) get no exemption: HTP runs
them as quantized operators too, so they must read a DequantizeLinear output like any other node
(ONNX Runtime's QDQ tools wrap them DequantizeLinear -> op -> QuantizeLinear with one scale).
"Weights" are the weight operands of the ops that have them (MatMul / Gemm / Conv B, a Gather
table); any other constant an op reads (a norm's gain, a bias, an epsilon, a mask fill) is a
static tensor HTP quantizes as an activation, so uint8 / uint16 is allowed for it too.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from onnx import helper

from edgelin.exporters.profiles import Profile, get_profile
from edgelin.runtime.package import read_package

# (op type, input index) of weight operands
WEIGHT_OPERANDS = {("MatMul", 1), ("Gemm", 1), ("Conv", 1), ("ConvTranspose", 1), ("Gather", 0)}
FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Violation:
    graph: str
    node: str
    op: str
    rule: str  # "op" | "dtype" | "dynamic"
    detail: str


def _dtype(elem: int) -> str:
    return helper.tensor_dtype_to_np_dtype(elem).name if elem not in (
        onnx.TensorProto.INT4, onnx.TensorProto.UINT4) else helper.tensor_dtype_to_string(elem).split(".")[-1].lower()


def _op(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def check_graph(proto: onnx.ModelProto, graph: str, profile: Profile) -> list[Violation]:
    """Every violation of `profile` in one ONNX step graph."""
    out: list[Violation] = []
    g = proto.graph
    if profile.static:
        for kind, vis in (("input", g.input), ("output", g.output)):
            for vi in vis:
                for i, d in enumerate(vi.type.tensor_type.shape.dim):
                    if not d.HasField("dim_value"):
                        out.append(Violation(graph, f"(graph {kind}) {vi.name}", "-", "dynamic",
                                             f"dim {i} is {d.dim_param or '?'!r}, not a number"))
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            inits.update({o: a.t for o in node.output for a in node.attribute if a.name == "value"})
    elem = {t.name: t.data_type for t in inits.values()}
    typed = onnx.shape_inference.infer_shapes(proto)
    for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
        elem.setdefault(vi.name, vi.type.tensor_type.elem_type)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[tuple[str, int]]] = {}
    for n in g.node:
        for k, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n.op_type, k))
    for i, node in enumerate(g.node):
        name, op = node.name or f"#{i}", _op(node)
        if profile.ops is not None and op not in profile.ops and node.op_type != "Constant":
            out.append(Violation(graph, name, op, "op", f"{op} is not supported on {profile.name}"))
        for t in node.input:
            if t in inits and inits[t].data_type and _dtype(inits[t].data_type) in profile.bad_initializer_dtypes:
                out.append(Violation(graph, name, op, "dtype",
                                     f"initializer {t} is {_dtype(inits[t].data_type)}, which {profile.name} cannot read"))
        if profile.quantized_activations is None:
            continue
        if node.op_type == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 else ""
            dt = _dtype(elem[zp]) if zp in elem else "uint8"
            if dt not in profile.quantized_activations:
                out.append(Violation(graph, name, op, "dtype",
                                     f"quantizes to {dt}; {profile.name} activations are {'/'.join(sorted(profile.quantized_activations))}"))
        elif node.op_type == "DequantizeLinear":
            src = node.input[0]
            dt = _dtype(elem[src]) if src in elem else "?"
            weight = src in inits and all(use in WEIGHT_OPERANDS for use in consumers.get(node.output[0], []))
            allowed = profile.weight_dtypes if weight else profile.quantized_activations | profile.weight_dtypes
            if allowed is not None and dt not in allowed:
                out.append(Violation(graph, name, op, "dtype", f"dequantizes {src} from {dt}"))
        elif node.op_type != "Constant":
            for t in node.input:
                if not t or elem.get(t) not in FLOAT:
                    continue
                src = producer.get(t)
                if src is None or src.op_type != "DequantizeLinear":
                    out.append(Violation(graph, name, op, "dtype",
                                         f"reads {_dtype(elem[t])} {t} that is not dequantized from an integer type"))
    if profile.quantized_activations is not None:
        for o in g.output:
            src = producer.get(o.name)
            if elem.get(o.name) in FLOAT and (src is None or src.op_type != "DequantizeLinear"):
                out.append(Violation(graph, f"(graph output) {o.name}", src.op_type if src else "-", "dtype",
                                     f"{_dtype(elem[o.name])} output {o.name} is not dequantized from an integer type"))
    return out


def check_package(package_dir: str | os.PathLike, target: str) -> list[Violation]:
    """Every violation of target `target`'s rules in the package's ONNX step graphs.

    Args:
        package_dir: a package directory (checksums verified).
        target: qnn-htp, openvino-npu, tvm or ort-cpu.
    Returns:
        The violations, graph by graph in node order (empty: the package fits the target).
    Example:
        >>> [v.op for v in check_package("out/pkg", "qnn-htp") if v.rule == "op"]  # doctest: +SKIP
        ['ConstantOfShape']
    """
    root = Path(package_dir)
    manifest = read_package(root)
    profile = get_profile(target)
    found: list[Violation] = []
    for name, g in manifest.graphs.items():
        found += check_graph(onnx.load(str(root / g.file)), name, profile)
    return found


def as_dicts(violations: list[Violation]) -> list[dict]:
    return [asdict(v) for v in violations]
