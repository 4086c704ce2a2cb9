"""Export profiles deliver what `edgelin check` demands.

qnn-htp: the full-QDQ W8A16 package of a tiny zoo model has zero violations, runs in ONNX Runtime's
CPU provider and in edgelin's runtime, and stays close to its FP32 package. openvino-npu: every
tiny zoo model's static graphs pass the check and compute what the FP32 graphs compute.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cli_helpers import run
from edgelin.calibration.streams import default_text
from edgelin.check import check_package
from edgelin.errors import EdgelinError
from edgelin.exporters.package import export_package
from edgelin.exporters.profiles import apply_profile
from edgelin.models import LM, ZOO
from edgelin.quantize.htp import HtpScheme, finite_masks
from edgelin.quantize.pipeline import run_pipeline
from edgelin.runtime import Session, generate, read_package
from edgelin.runtime.package import rewrite_package

TINY = [name for name in ZOO if name.endswith("-tiny")]
TEXT = default_text()[:20000]


def _logits(pkg, ids):
    s = Session(pkg)
    logits, _ = s.forward(ids, s.new_state())
    return logits


def _ids(n=200):
    return np.frombuffer(TEXT[10000:10000 + n].encode(), np.uint8).astype(np.int64)[None]


@pytest.fixture(scope="module", params=["gla-tiny", "hybrid-tiny"])
def htp(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    fp = export_package(LM(ZOO[request.param]).init_weights(), root / "fp32", prefill_tokens=8)
    run_pipeline(fp, root / "htp", HtpScheme(), TEXT[:4000], profile="qnn-htp", streams=2, tokens=256, validate=False)
    return fp, root / "htp"


def test_htp_package_has_zero_violations(htp):
    fp, q = htp
    assert check_package(q, "qnn-htp") == []
    assert check_package(fp, "qnn-htp")  # the FP32 package does not fit, so the check has teeth here
    m = read_package(q)
    assert m.raw["profile"] == {"name": "qnn-htp", "batch": 1}
    assert m.precision["scheme"] == "w8a16-htp"
    assert all(s.dtype == "float32" for s in m.states)  # float at the boundary, uint16 QDQ inside
    grids = m.precision["state_grids"]
    assert set(grids) == {s.input for s in m.states}
    for s in m.raw["states"]:  # decode and prefill carry each state on the same uint16 grid
        scales = set()
        for g in m.graphs.values():
            proto = onnx.load(str(q / g.file))
            inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
            q_in = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == s["input"])
            scales.add(float(inits[q_in.input[1]]))
            assert inits[q_in.input[2]].dtype == np.uint16
        assert len(scales) == 1 and scales.pop() == pytest.approx(grids[s["input"]]["scale"])


def test_check_flags_a_broken_htp_graph(htp, tmp_path):
    """One compute node fed the float tensor behind its QDQ pair, one state quantized to int16: both listed."""
    _, q = htp
    m = read_package(q)
    proto = onnx.load(str(q / "decode.onnx"))
    producer = {o: n for n in proto.graph.node for o in n.output}
    mul = next(n for n in proto.graph.node if n.op_type == "Mul" and producer[n.input[0]].op_type == "DequantizeLinear"
               and producer[producer[n.input[0]].input[0]].op_type == "QuantizeLinear")
    mul.input[0] = producer[producer[mul.input[0]].input[0]].input[0]  # skip the Q -> DQ pair
    state_q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == m.states[0].input)
    zero = next(t for t in proto.graph.initializer if t.name == state_q.input[2])
    zero.CopyFrom(numpy_helper.from_array(np.array(0, np.int16), zero.name))
    bad = rewrite_package(q, tmp_path / "bad", files={"decode.onnx": proto.SerializeToString()})
    found = {(v.node, v.rule) for v in check_package(bad, "qnn-htp")}
    assert (mul.name, "dtype") in found and (state_q.name, "dtype") in found
    assert all(rule == "dtype" for _, rule in found)


def test_htp_package_matches_fp32(htp):
    """Relative RMS of the logits under 4%, top-1 agreement 100% over 200 tokens from the zero state.

    The error is dominated by the int8 weights: a step of max|w| / 127 per output channel, about
    2.5 sigma / 127, is ~0.6% relative per linear layer and ~1.5% after the layers of these
    models (measured 1.3-1.7%); uint16 activations and states add ~1e-4. A broken state grid
    or mask fill gives errors of order 100%.
    """
    fp, q = htp
    ids = _ids()
    a, b = _logits(fp, ids), _logits(q, ids)
    rel = float(np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean()))
    assert rel < 0.04, rel
    assert (a.argmax(-1) == b.argmax(-1)).mean() == 1.0


def test_htp_package_generates(htp):
    _, q = htp
    out = list(generate(Session(q), [72, 105], max_new_tokens=6, seed=0))
    assert len(out) == 6 and all(0 <= t < 256 for t in out)


def test_w4a8_htp_package(tmp_path):
    """--w4a8 on HTP: int4 weights with one scale per output channel, uint8 linear-layer inputs, zero violations."""
    fp = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "fp32", prefill_tokens=8)
    q = tmp_path / "htp"
    run_pipeline(fp, q, HtpScheme(weight_bits=4, matmul_act_bits=8), TEXT[:4000], profile="qnn-htp", streams=2,
                 tokens=256, validate=False)
    assert check_package(q, "qnn-htp") == []
    assert read_package(q).precision["scheme"] == "w4a8-htp"
    proto = onnx.load(str(q / "decode.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for mm in (n for n in proto.graph.node if n.op_type == "MatMul" and producer[n.input[1]].input[0] in inits):
        w_dq, a_dq = producer[mm.input[1]], producer[mm.input[0]]
        assert inits[w_dq.input[0]].data_type == TensorProto.INT4
        assert len(inits[w_dq.input[1]].dims) == 1 and inits[w_dq.input[1]].dims[0] > 1  # per output channel
        assert inits[a_dq.input[2]].data_type == TensorProto.UINT8
    ids = _ids()  # int4 steps are 18x int8's: measured 10.5-11.2% relative RMS on gla-tiny / hybrid-tiny
    a, b = _logits(fp, ids), _logits(q, ids)
    assert float(np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean())) < 0.2
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9


def test_mask_fill_refuses_other_non_finite_constants():
    nan = numpy_helper.from_array(np.array([np.nan], np.float32), "c")
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [nan])
    with pytest.raises(EdgelinError, match="NaN or Inf"):
        finite_masks(helper.make_model(graph))


def _current_weights_index(pkg) -> dict:
    """The package's weights index, checked to describe the graphs it ships (not those they came from)."""
    m = read_package(pkg)
    index = m.raw["weights"]
    assert index["graphs"] == {name: m.files[g.file] for name, g in m.graphs.items()}
    return index


def test_profile_packages_carry_their_own_weights_file(htp, tmp_path):
    fp, q = htp
    fp_index = _current_weights_index(fp)
    htp_index = _current_weights_index(q)  # the FP32 weights.bin is not carried over
    assert (q / "weights.bin").stat().st_size < (fp / "weights.bin").stat().st_size / 2  # 8-bit against fp32
    assert {t["dtype"] for t in htp_index["tensors"]} != {t["dtype"] for t in fp_index["tensors"]}
    npu = apply_profile(export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "npu", prefill_tokens=8), "openvino-npu")
    _current_weights_index(npu)


@pytest.mark.parametrize("name", TINY)
def test_openvino_npu_profile_fits_and_is_exact(name, tmp_path):
    model = LM(ZOO[name]).init_weights()
    fp = export_package(model, tmp_path / "fp", prefill_tokens=8)
    npu = apply_profile(export_package(model, tmp_path / "npu", prefill_tokens=8), "openvino-npu")
    assert check_package(npu, "openvino-npu") == []
    ids = _ids(20)  # 2 prefill chunks + 4 decode steps
    np.testing.assert_allclose(_logits(npu, ids), _logits(fp, ids), rtol=0, atol=1e-5)


def test_int4_export_for_openvino_npu_uses_standard_ops(tmp_path):
    """--int4 --profile openvino-npu writes blocked uint4 DequantizeLinear, not ONNX Runtime's MatMulNBits."""
    r = run("export", "gla-tiny", "-o", tmp_path / "p", "--prefill-tokens", "8", "--int4", "--profile", "openvino-npu")
    assert r.exit_code == 0, r.output
    assert check_package(tmp_path / "p", "openvino-npu") == []
    assert read_package(tmp_path / "p").precision["int4_format"] == "qdq"
