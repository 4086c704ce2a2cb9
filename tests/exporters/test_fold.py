"""exporters/fold.py: parameter inputs folded into constants, large ones into the shared weights file,
and which constant holds which parameter; checked against onnxruntime on the unfolded graph."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgelin.exporters.fold import fold_parameters
from edgelin.exporters.weights import WeightStore
from edgelin.runtime.weights import WEIGHTS_FILE

RNG = np.random.default_rng(0)
PARAMS = {"w": RNG.standard_normal((16, 32)).astype(np.float32),  # a linear weight, read transposed
          "a_log": RNG.standard_normal(16).astype(np.float32),  # -exp(a_log): derived, no single parameter
          "scale": RNG.standard_normal(16).astype(np.float32)}  # read through an Unsqueeze: the same bytes


def graph() -> onnx.ModelProto:
    """y = (x @ w.T) * -exp(a_log) * unsqueeze(scale) + (shape constant chain folded too)."""
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["h"]),
        helper.make_node("Exp", ["a_log"], ["ea"]),
        helper.make_node("Neg", ["ea"], ["a"]),
        helper.make_node("Mul", ["h", "a"], ["ha"]),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [0])),
        helper.make_node("Unsqueeze", ["scale", "axes"], ["s"]),
        helper.make_node("Mul", ["ha", "s"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])] + \
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in PARAMS.items()]
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def reference(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(graph().SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, **PARAMS})[0]


def test_inline_fold_equals_the_unfolded_graph_and_records_origins():
    proto = graph()
    found = fold_parameters(proto, PARAMS, None, "decode")
    assert [i.name for i in proto.graph.input] == ["x"]
    assert {n.op_type for n in proto.graph.node} == {"MatMul", "Mul"}  # Transpose, Exp, Neg, Unsqueeze folded
    assert found == {"w": [("wt", True)], "scale": [("s", False)]}  # -exp(a_log) holds no single parameter
    x = RNG.standard_normal((3, 32)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, reference(x), rtol=1e-6, atol=1e-6)


def test_store_keeps_one_copy_per_parameter_across_graphs(tmp_path):
    store = WeightStore(tmp_path)
    protos = {name: graph() for name in ("decode", "prefill")}
    for name, proto in protos.items():
        fold_parameters(proto, PARAMS, store, name, convert=lambda _, v: v)
        onnx.save(proto, str(tmp_path / f"{name}.onnx"))
    index = store.index({name: tmp_path / f"{name}.onnx" for name in protos})
    # w.T (2 KiB) goes to the file once, read by both graphs; the 64-byte vectors stay inside each graph
    assert [(t["shape"], sorted(t["names"])) for t in index["tensors"]] == [([32, 16], ["decode", "prefill"])]
    assert (tmp_path / WEIGHTS_FILE).stat().st_size == PARAMS["w"].nbytes
    x = RNG.standard_normal((2, 32)).astype(np.float32)
    for name in protos:
        sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], reference(x), rtol=1e-6, atol=1e-6)
