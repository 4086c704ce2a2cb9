"""`edgelin check` finds planted violations (op, dtype, dynamic) and passes a clean profile export."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_helpers import assert_user_error, run
from edgelin.check import check_graph, check_package
from edgelin.exporters.package import export_package
from edgelin.exporters.profiles import apply_profile, get_profile
from edgelin.models import LM, ZOO
from edgelin.runtime import Session, read_package, write_package


@pytest.fixture(scope="module")
def npu_package(tmp_path_factory):
    """gla-tiny exported with the openvino-npu profile (batch 1, shapes folded)."""
    out = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path_factory.mktemp("p") / "gla", prefill_tokens=8)
    return apply_profile(out, "openvino-npu")


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
    """HTP: activations uint8/uint16 from QDQ; a float input, an int16 quantize, a 16-bit weight or a
    float graph output is a violation; a uint16 constant read by an elementwise op is not."""
    f = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])  # noqa: E731
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int16), "z16"),
             numpy_helper.from_array(np.array(0, np.uint16), "zu16"),
             numpy_helper.from_array(np.ones((4, 4), np.uint16), "w16"),
             numpy_helper.from_array(np.ones(4, np.uint16), "gain16")]
    nodes = [helper.make_node("Relu", ["x"], ["r0"], name="float_relu"),
             helper.make_node("QuantizeLinear", ["r0", "s", "z16"], ["q16"], name="q_int16"),
             helper.make_node("QuantizeLinear", ["r0", "s", "zu16"], ["qu16"], name="q_uint16"),
             helper.make_node("DequantizeLinear", ["qu16", "s", "zu16"], ["d"], name="dq"),
             helper.make_node("Relu", ["d"], ["y"], name="qdq_relu"),
             helper.make_node("DequantizeLinear", ["q16", "s", "z16"], ["y2"], name="dq16"),
             helper.make_node("DequantizeLinear", ["w16", "s", "zu16"], ["w"], name="dq_weight16"),
             helper.make_node("MatMul", ["d", "w"], ["mm"], name="matmul"),
             helper.make_node("DequantizeLinear", ["gain16", "s", "zu16"], ["gain"], name="dq_gain16"),
             helper.make_node("Mul", ["d", "gain"], ["y3"], name="mul_gain")]
    graph = helper.make_graph(nodes, "g", [f("x")], [f("y"), f("y2"), f("mm"), f("y3")], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    found = {(v.node, v.rule) for v in check_graph(proto, "decode", get_profile("qnn-htp"))}
    assert found == {("float_relu", "dtype"), ("q_int16", "dtype"), ("dq16", "dtype"), ("dq_weight16", "dtype"),
                     ("(graph output) y", "dtype"), ("(graph output) y3", "dtype"), ("(graph output) mm", "dtype")}


def test_data_movement_reading_a_dequantize_output_still_needs_qdq():
    """DQ -> Reshape -> MatMul: HTP runs the Reshape quantized, so the MatMul must read a DQ output too."""
    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint16), "z"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "shape"),
             numpy_helper.from_array(np.ones((2, 2), np.int8), "w8"),
             numpy_helper.from_array(np.array(0, np.int8), "z8")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Reshape", ["xd", "shape"], ["xr"], name="reshape"),
             helper.make_node("DequantizeLinear", ["w8", "s", "z8"], ["w"]),
             helper.make_node("MatMul", ["xr", "w"], ["mm"], name="matmul"),
             helper.make_node("QuantizeLinear", ["mm", "s", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [f("x", [4])], [f("y", [2, 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    found = check_graph(proto, "decode", get_profile("qnn-htp"))
    assert [(v.node, v.rule) for v in found] == [("matmul", "dtype")]
    assert "xr" in found[0].detail


def test_export_profile_flag(tmp_path):
    r = run("export", "gla-tiny", "-o", tmp_path / "p", "--prefill-tokens", "8", "--profile", "qnn-htp")
    assert r.exit_code == 0, r.output
    assert "fits qnn-htp" in r.output
    m = read_package(tmp_path / "p")
    assert m.raw["profile"]["name"] == "qnn-htp" and m.precision["scheme"] == "w8a16-htp"
    assert (tmp_path / "p" / "report" / "report.json").exists()
    assert check_package(tmp_path / "p", "qnn-htp") == []
    r = run("check", tmp_path / "p", "--target", "qnn-htp")
    assert r.exit_code == 0 and "no violations" in r.output
    r = run("generate", tmp_path / "p", "--prompt", "ROMEO:", "--max-new-tokens", "4", "--seed", "1")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("flags", [["--gptq"], ["--rotate"], ["--group-size", "64"], ["--smooth", "0.5"]])
def test_export_qnn_htp_refuses_cpu_pipeline_options(flags, tmp_path):
    assert_user_error(run("export", "gla-tiny", "-o", tmp_path / "q", "--profile", "qnn-htp", *flags),
                      "--profile qnn-htp does not take", flags[0])
    assert not (tmp_path / "q").exists()


def test_export_qnn_htp_one_scheme(tmp_path):
    assert_user_error(run("export", "gla-tiny", "-o", tmp_path / "q", "--profile", "qnn-htp", "--int8", "--int4"),
                      "choose one scheme")


def test_export_unknown_profile(tmp_path):
    assert_user_error(run("export", "gla-tiny", "-o", tmp_path / "q", "--profile", "npu"), "--profile must be one of")
