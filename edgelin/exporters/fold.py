"""A traced step graph gets its weights: constant subgraphs folded, large tensors to the weights file.

The tracer writes the graph without weights: each parameter is a graph input named after it
(`model.blocks.0.mixer.q_proj.weight`), and what the model derives from parameters (a transposed
matrix for MatMul, -exp(A_log), an unsqueezed norm scale) is still a chain of nodes. `fold_parameters`
computes those chains once, in graph order, one node at a time, and frees each value after its last
use, so a model of any size is folded with about one layer's tensors beside the model's own
parameters. Each resulting constant of at least `MIN_BYTES` goes straight to the package's shared
weights file (`WeightStore`) and is read back by the graph as ONNX external data; smaller ones stay
inside the graph.

It also records where each parameter lands, which `exporters/sites.py` needs to name the graph's
weights: a constant derived from one parameter by byte-preserving ops (Reshape, Unsqueeze, ...) is
that parameter, one derived through a 2-D Transpose is that parameter transposed.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgelin.exporters.weights import MIN_BYTES, WeightStore

SAME_BYTES_OPS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
Origin = tuple[str, bool] | None  # (parameter input, stored transposed), or no single parameter's values
Found = dict[str, list[tuple[str, bool]]]  # parameter input -> [(initializer, transposed)]


def _origin(node: onnx.NodeProto, origins: dict[str, Origin], value: np.ndarray) -> Origin:
    first = origins.get(node.input[0]) if node.input else None
    if first is None:
        return None
    if node.op_type in SAME_BYTES_OPS or node.op_type == "Cast" and value.dtype == np.float32:
        return first
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    if node.op_type == "Transpose" and value.ndim == 2 and perm in (None, [1, 0]):
        return first[0], not first[1]
    return None


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    """One node on constant inputs, by onnx's reference implementation."""
    names = [f"in{i}" if name else "" for i, name in enumerate(node.input)]
    copy = helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph([copy], "fold", [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in names if n],
                              [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in copy.output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {n: a for n, a in zip(names, inputs) if n})


def fold_parameters(proto: onnx.ModelProto, params: dict[str, np.ndarray], store: WeightStore | None, graph: str,
                    *, convert: Callable[[str, np.ndarray], np.ndarray] | None = None) -> Found:
    """Give `proto` (parameters as inputs) its weights, in place.

    Args:
        proto: a traced graph whose inputs include parameters, named as the keys of `params`.
        params: parameter input name -> its values (read, never written).
        store: the package's weights file; None keeps every constant inside the graph.
        graph: the graph's name in the store's index ("decode", "prefill", ...).
        convert: called on each constant the graph keeps (its initializer name, values); returns what
            to store instead (`exporters/fp16.to_fp16`).
    Returns:
        Where each parameter landed: parameter input -> [(initializer name, stored transposed)].
    """
    g = proto.graph
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    known: dict[str, np.ndarray] = {}
    origins: dict[str, Origin] = {name: (name, False) for name in params}
    for node in g.node:  # Constant nodes feed folds; one that only folds read goes with them
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    derived = set(params)
    folds = []
    for node in g.node:
        inputs = [i for i in node.input if i]
        if node.op_type != "Constant" and inputs and all(i in known or i in derived for i in inputs):
            folds.append(node)
            derived.update(node.output)
    folded = {id(n) for n in folds}
    kept = [n for n in g.node if id(n) not in folded]
    outputs = {o.name for o in g.output}
    uses = Counter(i for n in folds for i in n.input)  # reads by folds still to run
    needed = {i for n in kept for i in n.input} | outputs  # what the remaining graph reads
    found: Found = {}
    initializers: list[onnx.TensorProto] = []

    def value(name: str) -> np.ndarray:
        return params[name] if name in params else known[name]

    same: dict[tuple, str] = {}  # (origin, dtype, shape) -> the one initializer of this graph holding it
    renamed: dict[str, str] = {}

    def emit(name: str) -> None:
        """Make `name` an initializer of the graph: inline, or external in the store. A parameter the
        graph reads several times the same way (mLSTM's gates, once per position of the verify graph) is
        one initializer, so that a quantizer sees one weight with all its readers."""
        array = np.ascontiguousarray(value(name))
        origin = origins.get(name)
        if origin is not None:
            key = (origin, array.dtype.str, array.shape)
            if key in same:
                renamed[name] = same[key]
                return
            same[key] = name
            found.setdefault(origin[0], []).append((name, origin[1]))
        if convert is not None:
            array = convert(name, array)
        if store is None or array.nbytes < MIN_BYTES:
            initializers.append(numpy_helper.from_array(array, name))
            return
        key = (origin, array.dtype.str, array.shape) if origin is not None else None
        initializers.append(store.external(graph, name, array, key))

    for name in params:
        if name in needed:
            emit(name)
    for node in folds:
        results = _evaluate(node, [value(i) if i else None for i in node.input], opset)
        for out, result in zip(node.output, results):
            known[out] = result
            origins[out] = _origin(node, origins, result)
            if out in needed:
                emit(out)
        for i in node.input:
            uses[i] -= 1
            if uses[i] == 0 and i in known and i not in needed:
                del known[i]
        for out in node.output:
            if uses[out] == 0 and out in known and out not in needed:
                del known[out]
    kept_inputs = [i for i in g.input if i.name not in params]
    del g.input[:]
    g.input.extend(kept_inputs)
    for n in kept:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    read = {i for n in kept for i in n.input} | outputs  # Constants that only folds read go with them
    del g.node[:]
    g.node.extend(n for n in kept if n.op_type != "Constant" or n.output[0] in read)
    g.initializer.extend(initializers)
    return found
