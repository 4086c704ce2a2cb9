"""Take a static step graph onto an NPU's op list (`apply_profile` runs this after `make_static`).

- Shapes: with every input shape fixed, each `Shape` and `EyeLike` output is a constant. onnx's
  shape inference cannot see through some chains (Mamba's Expand -> Shape -> Mod), so the graph is
  run once on zero inputs and those outputs, and the graph outputs' dimensions, are read off.
- Ops missing from the target's list get an exact equivalent made of listed ops:
  `Trilu(x)` -> `x * mask` (a constant 0/1 triangle), `ReduceL2(x)` -> `Sqrt(ReduceSum(x * x))`,
  `ScatterElements` (a window ring's write) -> one `Where` per written index along its axis.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgelin.exporters.static import optimize_keeping

def _run(proto: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """The values of `names` and of every graph output, with every graph input zero."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(proto.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim],
                              helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in probe.graph.input}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def lower_graph(proto: onnx.ModelProto, ops: frozenset[str] | None, keep_names: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A static step graph with shape-only nodes folded and Trilu / ReduceL2 rewritten when `ops` lacks them.

    Tensors named in `keep_names` (declared block outputs) keep their names through the optimizer.
    """
    g = proto.graph
    const_nodes = [n for n in g.node if n.op_type in ("Shape", "EyeLike")]
    trilu = [n for n in g.node if n.op_type == "Trilu" and ops is not None and "Trilu" not in ops]
    scatter = [n for n in g.node if n.op_type == "ScatterElements" and ops is not None and "ScatterElements" not in ops]
    values = _run(proto, [n.output[0] for n in const_nodes + trilu] + [x for n in scatter for x in (n.input[0], n.input[2])])
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        for d, size in zip(dims, values[o.name].shape):
            d.Clear()
            d.dim_value = size
    keep = []
    for node in g.node:
        if node in const_nodes:
            g.initializer.append(numpy_helper.from_array(values[node.output[0]], node.output[0]))
        elif node in trilu:
            keep.extend(_trilu_as_mul(node, values[node.output[0]].shape, g))
        elif node in scatter:
            keep.extend(_scatter_as_where(node, values[node.input[0]].shape, values[node.input[2]].shape, g))
        elif node.op_type == "ReduceL2" and ops is not None and "ReduceL2" not in ops:
            keep.extend(_reduce_l2_as_sum(node, g))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    folded = optimize_keeping(proto, keep_names)
    onnx.checker.check_model(folded)
    return folded


def _trilu_as_mul(node: onnx.NodeProto, shape: tuple[int, ...], g: onnx.GraphProto) -> list[onnx.NodeProto]:
    inits = {t.name: t for t in g.initializer}
    k = int(numpy_helper.to_array(inits[node.input[1]])) if len(node.input) > 1 and node.input[1] else 0
    upper = next((a.i for a in node.attribute if a.name == "upper"), 1)
    rows, cols = shape[-2:]
    mask = (np.triu if upper else np.tril)(np.ones((rows, cols), np.float32), k)
    name = f"{node.output[0]}_triangle"
    g.initializer.append(numpy_helper.from_array(mask, name))
    return [helper.make_node("Mul", [node.input[0], name], [node.output[0]], name=f"{node.name}_as_mul")]


def _scatter_as_where(node: onnx.NodeProto, data: tuple[int, ...], updates: tuple[int, ...],
                      g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """ScatterElements(data, indices, updates) without reduction as a chain of Where: update j along
    the axis goes wherever its index equals the slot's. Exact for updates that span every other
    axis of data (a ring's write: [B, H, k, D] into [B, H, W, D]); a later j wins a repeated index."""
    if any(a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute):
        return [node]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(data)
    if any(u != d for i, (u, d) in enumerate(zip(updates, data)) if i != axis):
        return [node]
    p = f"{node.output[0]}_as_where/"
    slots = np.arange(data[axis], dtype=np.int64).reshape([-1 if i == axis else 1 for i in range(len(data))])
    g.initializer.extend([numpy_helper.from_array(slots, p + "slots"),
                          numpy_helper.from_array(np.array([axis], np.int64), p + "axis")])
    nodes, current = [], node.input[0]
    for j in range(updates[axis]):
        q = f"{p}{j}/"
        g.initializer.extend([numpy_helper.from_array(np.array([j], np.int64), q + "start"),
                              numpy_helper.from_array(np.array([j + 1], np.int64), q + "end")])
        out = node.output[0] if j == updates[axis] - 1 else q + "out"
        nodes += [helper.make_node("Slice", [node.input[1], q + "start", q + "end", p + "axis"], [q + "index"]),
                  helper.make_node("Slice", [node.input[2], q + "start", q + "end", p + "axis"], [q + "update"]),
                  helper.make_node("Equal", [p + "slots", q + "index"], [q + "here"]),
                  helper.make_node("Where", [q + "here", q + "update", current], [out])]
        current = out
    return nodes


def _reduce_l2_as_sum(node: onnx.NodeProto, g: onnx.GraphProto) -> list[onnx.NodeProto]:
    keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    axes = list(node.input[1:2])
    attr_axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if attr_axes is not None:
        axes = [f"{node.output[0]}_axes"]
        g.initializer.append(numpy_helper.from_array(np.array(attr_axes, np.int64), axes[0]))
    sq, total = f"{node.output[0]}_squared", f"{node.output[0]}_sum"
    return [helper.make_node("Mul", [node.input[0], node.input[0]], [sq], name=f"{node.name}_square"),
            helper.make_node("ReduceSum", [sq, *axes], [total], name=f"{node.name}_sum", keepdims=keepdims),
            helper.make_node("Sqrt", [total], [node.output[0]], name=f"{node.name}_sqrt")]
