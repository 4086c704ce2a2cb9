"""Step graphs to ONNX: a decode graph (1 token) and a prefill graph (a fixed chunk), loop-free."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import onnx
import torch

from edgelin.errors import EdgelinError
from edgelin.models.lm import LM
from edgelin.trace import StepGraph

OPSET = 17
FORBIDDEN_OPS = {"Loop", "Scan", "If"}


def export_step_graph(model: LM, tokens: int, path: str | Path, *, opset: int = OPSET) -> onnx.ModelProto:
    """Trace the step graph for `tokens` tokens (batch symbolic) and write it to `path` as ONNX."""
    graph = StepGraph(model.eval(), tokens)
    dynamic = {name: {0: "batch"} for name in graph.input_names + graph.output_names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, graph.example_inputs(), str(path), dynamo=False, opset_version=opset,
            input_names=graph.input_names, output_names=graph.output_names, dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    # The tracer names the logits' token axis after a node; pin it to the graph's fixed size.
    logits = next(o for o in proto.graph.output if o.name == "logits")
    for dim, value in zip(logits.type.tensor_type.shape.dim[1:], (tokens, model.config.vocab_size)):
        dim.Clear()
        dim.dim_value = value
    check_step_graph(proto)
    onnx.save(proto, str(path))
    return proto


def op_histogram(proto: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


def check_step_graph(proto: onnx.ModelProto) -> None:
    """onnx.checker plus the step-graph contract: no control flow, so every back end can run it."""
    onnx.checker.check_model(proto)
    bad = FORBIDDEN_OPS & set(op_histogram(proto))
    if bad:
        raise EdgelinError(f"exported graph contains {', '.join(sorted(bad))} nodes; step graphs must be loop-free")
