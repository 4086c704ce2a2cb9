"""`edgelin check` finds planted violations (op, dtype, dynamic) and passes a clean profile export."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgelin.check import check_graph, check_package
from edgelin.cli import load_commands
from edgelin.exporters.package import export_package
from edgelin.exporters.profiles import apply_profile, get_profile
from edgelin.models import LM, ZOO
from edgelin.runtime import Session, read_package, write_package


@pytest.fixture(scope="module")
def npu_package(tmp_path_factory):
    """gla-tiny exported with the openvino-npu profile (batch 1, shapes folded)."""
    out = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path_factory.mktemp("p") / "gla", prefill_tokens=8)
    return apply_profile(out, "openvino-npu")


def run(*args):
    return CliRunner().invoke(load_commands(), [str(a) for a in args])


def test_clean_profile_export_passes(npu_package):
    assert check_package(npu_package, "openvino-npu") == []
    r = run("check", npu_package, "--target", "openvino-npu")
    assert r.exit_code == 0, r.output
    assert read_package(npu_package).raw["profile"] == {"name": "openvino-npu", "batch": 1}
    s = Session(npu_package)  # the static graphs still run, at batch 1 only
    logits, _ = s.forward(np.array([[1, 2, 3]]), s.new_state())
    assert logits.shape == (1, 3, 256)


def test_planted_op_and_dynamic_dim_are_listed(npu_package, tmp_path):
    m = read_package(npu_package)
    proto = onnx.load(str(npu_package / "decode.onnx"))
    sig = next(n for n in proto.graph.node if n.op_type == "Sigmoid")
    sig.op_type = "Softsign"  # same signature, not on the NPU list
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"  # a dynamic dim again
    files = {n: npu_package / n for n in m.files}
    files["decode.onnx"] = proto.SerializeToString()
    bad = write_package(tmp_path / "bad", files, {k: v for k, v in m.raw.items() if k not in ("files", "format_version")})
    found = check_package(bad, "openvino-npu")
    assert {(v.graph, v.rule) for v in found} == {("decode", "op"), ("decode", "dynamic")}
    assert any(v.op == "Softsign" and v.node == sig.name for v in found)
    assert any("input_ids" in v.node and "'batch'" in v.detail for v in found)
    r = run("check", bad, "--target", "openvino-npu", "--json")
    assert r.exit_code == 1
    assert len(json.loads(r.output)) == len(found)


def test_qnn_dtypes():
    """HTP: activations uint8/uint16 from QDQ; a float input or an int16 quantize is a violation."""
    f = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])  # noqa: E731
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int16), "z16"),
             numpy_helper.from_array(np.array(0, np.uint16), "zu16")]
    nodes = [helper.make_node("Relu", ["x"], ["r0"], name="float_relu"),
             helper.make_node("QuantizeLinear", ["r0", "s", "z16"], ["q16"], name="q_int16"),
             helper.make_node("QuantizeLinear", ["r0", "s", "zu16"], ["qu16"], name="q_uint16"),
             helper.make_node("DequantizeLinear", ["qu16", "s", "zu16"], ["d"], name="dq"),
             helper.make_node("Relu", ["d"], ["y"], name="qdq_relu"),
             helper.make_node("DequantizeLinear", ["q16", "s", "z16"], ["y2"], name="dq16")]
    graph = helper.make_graph(nodes, "g", [f("x")], [f("y"), f("y2")], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    found = {(v.node, v.rule) for v in check_graph(proto, "decode", get_profile("qnn-htp"))}
    assert ("float_relu", "dtype") in found and ("q_int16", "dtype") in found and ("dq16", "dtype") in found
    assert not {n for n, _ in found} & {"q_uint16", "dq", "qdq_relu"}


def test_export_profile_flag(tmp_path):
    r = run("export", "gla-tiny", "-o", tmp_path / "p", "--prefill-tokens", "8", "--profile", "qnn-htp")
    assert r.exit_code == 0, r.output
    assert read_package(tmp_path / "p").raw["profile"]["name"] == "qnn-htp"
    rules = {v.rule for v in check_package(tmp_path / "p", "qnn-htp")}
    assert rules == {"dtype"}  # static, every op on the HTP list; FP32 activations await quantization
    r = run("export", "gla-tiny", "-o", tmp_path / "q", "--profile", "npu")
    assert r.exit_code == 2 and "--profile must be one of" in r.output
