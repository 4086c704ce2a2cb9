"""Static step graphs: fix the batch axis and fold the shape arithmetic the tracer left behind.

NPUs (QNN HTP, OpenVINO NPU) and TVM's ONNX importer want every shape known at compile time;
with batch fixed, `Shape -> Gather -> ... -> Reshape` chains fold to constants. QuantizeLinear /
DequantizeLinear pairs are kept (onnxscript's folder preserves them), so QDQ graphs stay QDQ.
"""
from __future__ import annotations

import onnx

from edgelin.errors import EdgelinError


def optimize_keeping(proto: onnx.ModelProto, names: tuple[str, ...] = ()) -> onnx.ModelProto:
    """onnxscript's optimizer, with the tensors in `names` (declared block outputs) keeping their names."""
    import onnxscript.optimizer

    outputs = len(proto.graph.output)
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)  # outputs keep names
    folded = onnxscript.optimizer.optimize(proto)
    del folded.graph.output[outputs:]
    return folded


def make_static(proto: onnx.ModelProto, batch: int = 1, keep_names: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A copy of `proto` with every symbolic dimension set to `batch` and constants folded.

    Args:
        proto: a step graph whose only symbolic dimension is `batch` (docs/FORMAT.md).
        batch: the batch size to fix.
        keep_names: tensors that keep their names through the optimizer.
    Returns:
        The folded model, checked with onnx.checker.
    """
    if batch < 1:
        raise EdgelinError(f"batch must be >= 1, not {batch}")
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    del proto.graph.value_info[:]  # intermediate shapes are inferred again below
    for vi in proto.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                if dim.dim_param != "batch":
                    raise EdgelinError(f"{vi.name} has symbolic dimension {dim.dim_param!r}; only 'batch' may be symbolic")
                dim.Clear()
                dim.dim_value = batch
    for vi in proto.graph.output:  # the tracer names some output axes after nodes: infer them again
        for i, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_param"):
                dim.Clear()
                if i == 0:
                    dim.dim_value = batch
    full_window_ranges(proto)  # no shape may depend on the data
    folded = _fold_constant_of_shape(optimize_keeping(proto, keep_names))
    onnx.checker.check_model(folded)
    return folded


def full_window_ranges(proto: onnx.ModelProto) -> int:
    """End every Range that reads a window ring's `seen` state at the window, in place; returns how many.

    Sliding-window attention reads the ring's filled slots only, up to an end that `seen` gives
    (`SlidingWindowAttention._attend_filled`). The slots past it are empty in every row and masked
    out, so reading the whole window gives the same result with shapes that no longer depend on the data.
    """
    producer = {o: n for n in proto.graph.node for o in n.output}
    inputs = {i.name: i for i in proto.graph.input}
    windows = {name: inputs[name[: -len("seen")] + "key"].type.tensor_type.shape.dim[2].dim_value
               for name in inputs if name.endswith(".seen") and name[: -len("seen")] + "key" in inputs}

    def window_read(name: str) -> int | None:
        """The window of the `seen` state whose values `name` is computed from, if any (not through a
        Shape: a traced head size reads the shape of a tensor whose length depends on `seen`)."""
        visited, todo = set(), [name]
        while todo:
            t = todo.pop()
            if t in windows:
                return windows[t]
            if t in visited or t not in producer or producer[t].op_type == "Shape":
                continue
            visited.add(t)
            todo.extend(producer[t].input)
        return None

    ends = []
    for node in proto.graph.node:
        window = window_read(node.input[1]) if node.op_type == "Range" else None
        if window:
            end = f"{node.output[0]}_full_window_end"
            ends.append(onnx.helper.make_node("Constant", [], [end], value=onnx.helper.make_tensor(
                end, onnx.TensorProto.INT64, [], [window])))
            node.input[1] = end
    nodes = ends + list(proto.graph.node)  # the Constants first: the list stays in topological order
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(ends)


def _fold_constant_of_shape(proto: onnx.ModelProto, max_elements: int = 1 << 20) -> onnx.ModelProto:
    """ConstantOfShape of a constant shape as an initializer (onnxscript leaves it; QNN HTP has no such op)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    keep = []
    for node in proto.graph.node:
        shape = inits.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
        dims = numpy_helper.to_array(shape).astype(np.int64) if shape is not None else None
        if dims is None or int(np.prod(dims)) > max_elements:
            keep.append(node)
            continue
        value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
        proto.graph.initializer.append(numpy_helper.from_array(np.full(dims, value.reshape(-1)[0]), node.output[0]))
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return proto
