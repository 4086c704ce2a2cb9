"""The decode graph's short convolutions stay minimal: Concat, Mul, ReduceSum, Split (+ bias, activation)."""
from collections import Counter

import pytest

from edgelin.exporters.onnx import export_step_graph
from edgelin.models import LM, ZOO
from edgelin.models.layers.conv import ShortConvolution

CONV_MODELS = ["gla-tiny", "gated-delta-tiny", "delta-net-tiny", "mamba-tiny", "mamba2-tiny", "hybrid-tiny"]


def expected_ops(conv: ShortConvolution) -> Counter:
    ops = Counter(Concat=1, Mul=1, ReduceSum=1, Split=1)
    if conv.bias is not None:
        ops["Add"] += 1
    if conv.activation == "silu":
        ops.update(Sigmoid=1, Mul=1)
    return ops


def by_items(ops: Counter) -> list:
    return sorted(ops.items())


@pytest.mark.parametrize("name", CONV_MODELS)
def test_decode_graph_conv_ops(name, tmp_path):
    model = LM(ZOO[name]).init_weights().eval()
    convs = [m for m in model.modules() if isinstance(m, ShortConvolution)]
    proto = export_step_graph(model, 1, tmp_path / "decode.onnx")
    scopes: dict[str, Counter] = {}
    for node in proto.graph.node:
        if "/conv/" in node.name and node.op_type != "Constant":
            scopes.setdefault(node.name.split("/conv/")[0], Counter())[node.op_type] += 1
    assert sorted(scopes.values(), key=by_items) == sorted(map(expected_ops, convs), key=by_items), scopes
    if "swa" not in model.config.pattern:  # attention keeps heads-first key/value states (Transposes); nothing else may
        assert "Transpose" not in {n.op_type for n in proto.graph.node}
