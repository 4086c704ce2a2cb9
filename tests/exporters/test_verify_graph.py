"""The verify graph: K decode steps in one run, per-token products batched over the K positions.

For every zoo family, FP32 and INT8: its logits and the state after every position equal K runs of
the decode graph (`registry_helpers.check_verify_equals_decode`), and its contract holds: loop-free,
the decode graph's inputs, a state output per position made by a hand-off node, the decode graph's
quantization scales.
"""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgelin.errors import EdgelinError
from edgelin.exporters.package import export_package
from edgelin.models import ZOO
from edgelin.quantize.package import quantize_package
from edgelin.quantize.schemes import W4A8, W8A8
from edgelin.runtime import Session, read_package
from edgelin.runtime.package import position_output, steps_output
from edgelin.sites import activation_inputs, graph_sites
from registry_helpers import check_verify_equals_decode, zoo_model

TINY = [name for name in ZOO if name.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
def test_verify_graph_equals_decode_steps_fp32(fp_package, name):
    check_verify_equals_decode(fp_package(name))


@pytest.mark.parametrize("name", TINY)
def test_verify_graph_equals_decode_steps_int8(fp_package, table_of, tmp_path, name):
    check_verify_equals_decode(quantize_package(fp_package(name), tmp_path / "int8", W8A8(), table_of(name)))


@pytest.mark.parametrize("scheme", [W8A8(state="fp32"), W4A8()], ids=["w8a8-state-fp32", "w4a8"])
def test_verify_graph_equals_decode_steps_other_schemes(fp_package, table_of, tmp_path, scheme):
    check_verify_equals_decode(quantize_package(fp_package("hybrid-tiny"), tmp_path / "q", scheme, table_of("hybrid-tiny")))


def test_verify_graph_contract(fp_package):
    root = fp_package("hybrid-tiny")
    m = read_package(root)
    K = m.graphs["verify"].tokens
    assert K == 4 and m.graphs["decode"].tokens == 1  # DEFAULT_VERIFY_TOKENS
    decode = onnx.load(str(root / "decode.onnx"), load_external_data=False)
    verify = onnx.load(str(root / "verify.onnx"), load_external_data=False)
    assert not {"Loop", "Scan", "If"} & {n.op_type for n in verify.graph.node}
    assert [i.name for i in verify.graph.input] == [i.name for i in decode.graph.input]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in verify.graph.output}
    assert outputs == {"logits": ["batch", K, m.vocab_size],
                       **{steps_output(s.output): ["batch", K, *s.shape[1:]] for s in m.states}}
    producer = {o: n for n in verify.graph.node for o in n.output}
    for s in m.states:  # every state leaves each position through its own hand-off node, then the stack
        for t in range(K):
            name = position_output(s.output, t)
            assert producer[name].op_type == "Identity" and producer[name].name == f"{name}_handoff", name
        assert producer[steps_output(s.output)].op_type == "Concat"
    # the weights are the decode graph's, read once: one product per linear layer, batched over K
    sites = graph_sites(m.raw, "verify")
    for site in sites.linears():
        assert len(activation_inputs(verify, site)) == 1, site.name


def test_quantized_verify_graph_has_the_decode_graphs_scales(fp_package, table_of, tmp_path):
    root = quantize_package(fp_package("gla-tiny"), tmp_path / "int8", W8A8(), table_of("gla-tiny"))

    def act_scales(graph):
        proto = onnx.load(str(root / f"{graph}.onnx"), load_external_data=False)
        inits = {i.name: i for i in proto.graph.initializer}
        producer = {o: n for n in proto.graph.node for o in n.output}
        out = []
        for node in proto.graph.node:
            if node.op_type == "MatMul" and producer.get(node.input[0]) is not None \
                    and producer[node.input[0]].op_type == "DequantizeLinear":
                out.append(float(numpy_helper.to_array(inits[producer[node.input[0]].input[1]])))
        return out

    decode, verify = act_scales("decode"), act_scales("verify")
    assert decode and decode == verify
    m = read_package(root)
    proto = onnx.load(str(root / "verify.onnx"), load_external_data=False)
    types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    for s in m.states:  # every position's state is stored as the state's integers
        assert types[steps_output(s.output)] == onnx.TensorProto.INT16


def test_verify_tokens_option(tmp_path):
    model = zoo_model("gla-tiny")
    bare = export_package(model, tmp_path / "none", prefill_tokens=8, verify_tokens=0)
    assert "verify" not in read_package(bare).graphs and not (bare / "verify.onnx").exists()
    assert Session(bare).verify_tokens == 0
    six = export_package(model, tmp_path / "six", prefill_tokens=8, verify_tokens=6)
    assert Session(six).verify_tokens == 6
    check_verify_equals_decode(six, rounds=2)
    for bad in (1, -2):
        with pytest.raises(EdgelinError, match="verify_tokens"):
            export_package(model, tmp_path / f"bad{bad}", verify_tokens=bad)


def test_verify_graph_is_loaded_on_first_use(fp_package):
    s = Session(fp_package("gla-tiny"), threads=1)
    assert set(s.graphs) == {"decode", "prefill"}
    logits, states = s.verify(np.arange(4)[None], s.new_state())
    assert set(s.graphs) == {"decode", "prefill", "verify"} and logits.shape == (1, 4, 256) and len(states) == 4


def test_calibration_reads_the_decode_and_prefill_graphs_only(table_of):
    assert set(table_of("gla-tiny").graphs) == {"decode", "prefill"}  # the verify graph borrows decode's ranges
