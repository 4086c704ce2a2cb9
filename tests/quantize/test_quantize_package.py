import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from edgelin.errors import EdgelinError
from edgelin.models.zoo import ZOO
from edgelin.quantize.package import quantize_package
from edgelin.quantize.primitives import WeightQuant, quantize_weight_np
from edgelin.quantize.schemes import (
    W4A8, W4A16, W8, W8A8, W8A16, Int4Format, LayerPrecision, PerChannel, PerGroup, QuantScheme, StatePrecision,
)
from edgelin.runtime import Session, read_package
from edgelin.sites import activation_inputs, graph_sites

from quant_helpers import TINY

IDS = np.array([[(7 * i + 3) % 256 for i in range(40)], [(11 * i + 5) % 256 for i in range(40)]])


def rms_ratio(ref, out):
    return float(np.sqrt(np.mean((ref - out) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def run(pkg):
    s = Session(pkg)
    logits, state = s.forward(IDS, s.new_state(2))
    return logits, state


def weight_of(proto, name):
    """(kind, initializer) behind a MatMul's weight input: ("float", W), ("dq", Wq), or (None, None)
    when the input is an activation (e.g. q . state)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    if name in inits:
        return ("float", inits[name]) if len(inits[name].dims) == 2 else (None, None)
    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        return "dq", inits[node.input[0]]
    return None, None


STORED = {"int8": TensorProto.INT8, "int4": TensorProto.UINT4, "fp32": TensorProto.FLOAT}


def check_weights(pkg):
    """Every linear layer of every graph is stored as the manifest's precision map says."""
    m = read_package(pkg)
    layers = m.precision["layers"]
    for g in m.graphs.values():
        proto = onnx.load(str(pkg / g.file))
        stored = {}  # by weight: the verify graph reads a layer computed per position (mLSTM's gates) K times
        for node in proto.graph.node:
            if node.op_type == "MatMulNBits":
                assert {a.name: a.i for a in node.attribute}["bits"] == 4
                stored[node.input[1]] = TensorProto.UINT4
            elif node.op_type in ("MatMul", "Gemm"):  # Gemm: a tied head, reading the embedding table
                kind, init = weight_of(proto, node.input[1])
                if kind is not None:
                    stored[init.name] = init.data_type
        want = sorted(STORED[v] for k, v in layers.items() if k != "embed")
        assert sorted(stored.values()) == want, g.file


@pytest.mark.parametrize("name", TINY)
def test_w8a8_runs_in_runtime_close_to_fp(tmp_path, fp_package, table_of, name):
    fp = fp_package(name)
    q = quantize_package(fp, tmp_path / "q", W8A8(), table_of(name))
    ref, _ = run(fp)
    out, state = run(q)
    assert rms_ratio(ref, out) < 0.05
    m = read_package(q)
    assert m.precision["scheme"] == "w8a8"
    assert all(v == "int8" for v in m.precision["layers"].values())
    for s in m.states:
        assert state[s.input].dtype == (np.float32 if s.kind == "seen" else np.int16)
        assert s.dtype == state[s.input].dtype.name
    check_weights(q)


def test_w8_is_weight_only_and_closer_than_w8a8(tmp_path, fp_package, table_of):
    """--w8: every linear weight int8, no activation QDQ (the states keep theirs), nearer FP32 than W8A8."""
    fp, table = fp_package("hybrid-tiny"), table_of("hybrid-tiny")
    w8 = quantize_package(fp, tmp_path / "w8", W8(), table)
    w8a8 = quantize_package(fp, tmp_path / "w8a8", W8A8(), table)
    check_weights(w8)
    m = read_package(w8)
    assert m.precision["scheme"] == "w8" and m.precision["act_bits"] == 0
    states = {s.input for s in m.states} | {s.output for s in m.states}
    for g in m.graphs.values():
        proto = onnx.load(str(w8 / g.file))
        quantized = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
        assert quantized and all(any(t.startswith(s) for s in states) for t in quantized), quantized
    ref = run(fp)[0]
    assert rms_ratio(ref, run(w8)[0]) < rms_ratio(ref, run(w8a8)[0])


@pytest.mark.parametrize("scheme", [W4A16(), W4A8(granularity=PerGroup(64)), W4A16(int4_format=Int4Format.QDQ)],
                         ids=["w4a16-nbits", "w4a8-g64", "w4a16-qdq"])
def test_int4_every_weight_4bit_or_recorded(tmp_path, fp_package, table_of, scheme):
    fp = fp_package("hybrid-tiny")
    q = quantize_package(fp, tmp_path / "q", scheme, table_of("hybrid-tiny"))
    ref, _ = run(fp)
    out, _ = run(q)
    assert rms_ratio(ref, out) < 0.15
    layers = read_package(q).precision["layers"]
    assert layers["lm_head"] == "int8" and layers["embed"] == "int8"  # the scheme keeps these at int8
    assert sum(v == "int4" for v in layers.values()) >= 20
    check_weights(q)


def test_w4a8_computes_4bit_layers_in_int8(tmp_path, fp_package, table_of):
    """W4A8's MatMulNBits run ONNX Runtime's int8 kernel (accuracy level 4) on the float activation,
    which it quantizes per block itself: no calibrated QDQ in front; W4A16 keeps float compute."""
    fp = fp_package("gla-tiny")
    for scheme, level in ((W4A8(), 4), (W4A16(), None)):
        q = quantize_package(fp, tmp_path / scheme.name, scheme, table_of("gla-tiny"))
        graph = onnx.load(str(q / "decode.onnx"), load_external_data=False).graph
        producers = {o: n for n in graph.node for o in n.output}
        nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
        assert nbits
        for n in nbits:
            assert {a.name: a.i for a in n.attribute}.get("accuracy_level") == level
            assert (producers[n.input[0]].op_type == "DequantizeLinear") == (level is None)
        assert rms_ratio(run(fp)[0], run(q)[0]) < 0.15


def test_int4_fallback_only_where_group_does_not_divide(tmp_path, fp_package, table_of):
    # gla-tiny's low-rank gate (gk_proj.1) has K = 16 < 32: it falls back to int8, and the manifest says so
    fp = fp_package("gla-tiny")
    q = quantize_package(fp, tmp_path / "q", W4A16(), table_of("gla-tiny"))
    layers = read_package(q).precision["layers"]
    assert layers["blocks.0.mixer.gk_proj.1"] == "int8"
    assert layers["blocks.0.mixer.q_proj"] == "int4"
    check_weights(q)


def test_stored_integers_are_the_primitives(tmp_path, fp_package, table_of):
    fp = fp_package("gla-tiny")
    q = quantize_package(fp, tmp_path / "q", W8A8(), table_of("gla-tiny"))
    fp_proto, q_proto = onnx.load(str(fp / "decode.onnx")), onnx.load(str(q / "decode.onnx"))
    fp_inits = {i.name: numpy_helper.to_array(i) for i in fp_proto.graph.initializer}
    q_by_name = {n.name: n for n in q_proto.graph.node}
    checked = 0
    for site in graph_sites(read_package(fp).raw, "decode").linears():
        (node, _), = activation_inputs(fp_proto, site)
        w = fp_inits[site.initializer]
        kind, init = weight_of(q_proto, q_by_name[node.name].input[1])
        rows = w if site.axis == 0 else w.T  # output channels first (axis 0: a tied head's [vocab, d] table)
        want, _, _ = quantize_weight_np(rows, WeightQuant(8))
        assert kind == "dq" and np.array_equal(numpy_helper.to_array(init), want if site.axis == 0 else want.T)
        checked += 1
    assert checked > 10


def test_mixed_precision_overrides_and_state_fp32(tmp_path, fp_package, table_of):
    fp = fp_package("gla-tiny")
    scheme = W8A16(state=StatePrecision.FP32, lm_head=LayerPrecision.FP32,
                   layers={"blocks.1.mlp.down_proj": LayerPrecision.FP32})
    q = quantize_package(fp, tmp_path / "q", scheme, table_of("gla-tiny"))
    m = read_package(q)
    assert m.precision["layers"]["lm_head"] == "fp32" and m.precision["layers"]["blocks.1.mlp.down_proj"] == "fp32"
    assert all(s.dtype == "float32" for s in m.states)
    fp_proto, proto = onnx.load(str(fp / "decode.onnx")), onnx.load(str(q / "decode.onnx"))
    by_name = {n.name: n for n in proto.graph.node}
    float_weights = [site.name for site in graph_sites(read_package(fp).raw, "decode").linears()
                     for node, _ in activation_inputs(fp_proto, site)
                     if weight_of(proto, by_name[node.name].input[1])[0] == "float"]
    assert sorted(float_weights) == ["blocks.1.mlp.down_proj", "lm_head"]
    assert QuantScheme.from_dict(m.precision).precision_of("lm_head") == LayerPrecision.FP32
    run(q)


def test_scheme_json_roundtrip_and_checks():
    for s in (W8A8(), W8A16(observer="mse"), W4A16(granularity=PerGroup(128), gptq=True), W4A8(smooth=0.5), W8()):
        assert QuantScheme.from_dict(s.to_dict()) == s
    with pytest.raises(EdgelinError, match="PerGroup"):
        W4A16(granularity=PerChannel())
    with pytest.raises(EdgelinError, match="group size"):
        PerGroup(48)
    with pytest.raises(EdgelinError, match="observer"):
        W8A8(observer="max")
    with pytest.raises(EdgelinError, match="state"):
        W8A8(state="int4")
    with pytest.raises(EdgelinError, match="GPTQ"):
        W8A8(gptq=True)
    with pytest.raises(EdgelinError, match="unknown quantization scheme"):
        QuantScheme.from_dict({"scheme": "w2a2"})


def test_refuses_quantized_input(tmp_path, fp_package, table_of):
    q = quantize_package(fp_package("gla-tiny"), tmp_path / "q", W8A8(), table_of("gla-tiny"))
    with pytest.raises(EdgelinError, match="already quantized"):
        quantize_package(q, tmp_path / "qq", W8A8(), table_of("gla-tiny"))


def test_layers_with_identical_weights_are_each_quantized(tmp_path, table_of):
    """Two layers holding the same weights are two declared sites: both quantized, both named."""
    import torch

    from edgelin.calibration.collect import calibrate_package
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    model = LM(ZOO["gla-tiny"]).init_weights()
    with torch.no_grad():
        model.blocks[1].mixer.q_proj.weight.copy_(model.blocks[0].mixer.q_proj.weight)
        model.blocks[0].mixer.k_proj.weight.copy_(model.blocks[0].mixer.q_proj.weight)
    fp = export_package(model, tmp_path / "fp")
    table = calibrate_package(fp, "To be, or not to be, that is the question. " * 40, streams=2, tokens=256)
    q = quantize_package(fp, tmp_path / "q", W8A8(), table)
    layers = read_package(q).precision["layers"]
    same = ["blocks.0.mixer.q_proj", "blocks.0.mixer.k_proj", "blocks.1.mixer.q_proj"]
    assert all(layers[n] == "int8" for n in same)
    sites = graph_sites(read_package(fp).raw, "decode").weights
    assert len({sites[n].initializer for n in same}) == 3
    proto = onnx.load(str(q / "decode.onnx"))
    float_left = [n.input[1] for n in proto.graph.node if n.op_type == "MatMul"
                  and weight_of(proto, n.input[1])[0] == "float"]
    assert not float_left
    ref, _ = run(fp)
    logits, _ = run(q)
    assert rms_ratio(ref, logits) < 0.05


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny"])
def test_int8_embedding_dequantizes_only_the_rows_read(tmp_path, fp_package, table_of, name):
    """The int8 table is gathered, then scaled: no DequantizeLinear of the whole table, and each row is
    exactly its int8 values times its row scale (what DequantizeLinear(axis=0) -> Gather computed)."""
    import onnxruntime as ort

    fp = fp_package(name)
    q = quantize_package(fp, tmp_path / "q", W8A8(), table_of(name))
    site = next(s for s in graph_sites(read_package(fp).raw, "decode").weights.values() if s.kind == "embedding")
    table = numpy_helper.to_array({i.name: i for i in onnx.load(str(fp / "decode.onnx")).graph.initializer}[site.initializer])
    want_q, want_scale, _ = quantize_weight_np(table, WeightQuant(8))
    for g in read_package(q).graphs.values():
        proto = onnx.load(str(q / g.file))
        inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        dq_of_table = [n.output[0] for n in proto.graph.node
                       if n.op_type == "DequantizeLinear" and n.input[0] == f"{site.initializer}_int8"]
        # only a tied head's Gemm may read the whole table dequantized (ONNX Runtime fuses it into QGemm)
        assert all(n.op_type == "Gemm" for n in proto.graph.node if set(n.input) & set(dq_of_table))
        gather = next(n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] == f"{site.initializer}_int8")
        assert np.array_equal(inits[gather.input[0]], want_q)
        # run the embedding alone: the graph cut at the Mul that scales the gathered rows
        cast = next(n for n in proto.graph.node if n.op_type == "Cast" and n.input[0] == gather.output[0])
        mul = next(n for n in proto.graph.node if n.op_type == "Mul" and cast.output[0] in n.input)
        part = onnx.utils.Extractor(proto).extract_model(["input_ids"], [mul.output[0]])
        ids = np.array([0, 5, 255, 5] * g.tokens)[:g.tokens]
        rows = ort.InferenceSession(part.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids[None]})[0]
        assert np.array_equal(rows[0], want_q[ids].astype(np.float32) * want_scale[ids].astype(np.float32))


def test_mlstm_int8_and_int4_packages_run(tmp_path):
    """mlstm-tiny with its memory in use (input gates opened: the zoo init keeps them near exp(-10)):
    W8A8 and W4A16 packages run prefill chunks and decode steps, store every weight as recorded and
    every state, the stabiliser m included, as int16."""
    import torch

    from edgelin.calibration import calibrate_package, default_text
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    model = LM(ZOO["mlstm-tiny"]).init_weights()
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.igate_bias.zero_()
            block.mixer.fgate_bias.copy_(torch.linspace(1.0, 4.0, block.mixer.heads))
            for proj in (block.mixer.igate_proj, block.mixer.fgate_proj):
                proj.weight.mul_(5.0)
    fp = export_package(model, tmp_path / "fp", prefill_tokens=16)
    table = calibrate_package(fp, default_text(), streams=2, tokens=256)
    ids = np.concatenate([IDS, IDS[:, :4]], 1)  # 2 prefill chunks, then 12 decode steps
    s = Session(fp)
    ref, _ = s.forward(ids, s.new_state(2))
    for scheme, bound in ((W8A8(), 0.1), (W4A16(), 0.5)):
        q = quantize_package(fp, tmp_path / scheme.name, scheme, table)
        check_weights(q)
        s = Session(q)
        logits, state = s.forward(ids, s.new_state(2))
        assert np.isfinite(logits).all() and rms_ratio(ref, logits) < bound, (scheme.name, rms_ratio(ref, logits))
        assert {state[spec.input].dtype for spec in s.manifest.states} == {np.dtype(np.int16)}
        assert {spec.kind for spec in s.manifest.states} == {"cell_state", "normalizer_state", "max_state"}


def test_fp_weights_are_read_from_the_package_file_and_nowhere_else(fp_package):
    from edgelin.quantize.qdq import _initializer_array

    pkg = fp_package("gla-tiny")
    proto = onnx.load(str(pkg / "prefill.onnx"), load_external_data=False)
    inits = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    loaded = {t.name: t for t in onnx.load(str(pkg / "prefill.onnx")).graph.initializer}
    assert inits and all(np.array_equal(_initializer_array(t, pkg), numpy_helper.to_array(loaded[t.name]))
                         for t in inits)
    for key, value in (("location", "../weights.bin"), ("location", "/etc/passwd")):
        bad = TensorProto()
        bad.CopyFrom(inits[0])
        next(e for e in bad.external_data if e.key == key).value = value
        with pytest.raises(EdgelinError, match="points outside its package"):
            _initializer_array(bad, pkg)


@pytest.mark.parametrize("scheme", [W8A8(), W4A8()], ids=["w8a8", "w4a8"])
def test_streamed_package_equals_in_memory_and_quantizes_each_weight_once(tmp_path, fp_package, table_of, monkeypatch,
                                                                          scheme):
    """quantize_package writes each weight into the new package's file as it is made; a weight that
    decode, prefill and verify share is quantized once, and the graphs equal the in-memory pass's."""
    import edgelin.quantize.qdq as qdq
    from edgelin.quantize.package import quantize_protos

    pkg, table = fp_package("gla-tiny"), table_of("gla-tiny")
    made = []
    real = qdq.quantize_weight_np
    monkeypatch.setattr(qdq, "quantize_weight_np", lambda w, spec: made.append(spec.bits) or real(w, spec))
    q = quantize_package(pkg, tmp_path / "q", scheme, table)
    index = read_package(q).raw["weights"]["tensors"]
    int8 = [t for t in index if t["dtype"] == "int8"]
    assert {"decode", "prefill", "verify"} <= {g for t in int8 for g in t["names"]}
    inline = 0  # small ones (under MIN_BYTES) stay inside each graph, quantized for each
    for g in read_package(q).graphs.values():
        proto = onnx.load(str(q / g.file), load_external_data=False)
        inline += sum(t.data_type == TensorProto.INT8 and len(t.dims) == 2 and t.data_location != TensorProto.EXTERNAL
                      for t in proto.graph.initializer)
    assert made.count(8) == len(int8) + inline  # each stored int8 tensor computed once for the three graphs
    in_memory, _, _ = quantize_protos(pkg, scheme, table)
    for name, g in read_package(q).graphs.items():
        streamed = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(q / g.file)).graph.initializer}
        held = {t.name: numpy_helper.to_array(t) for t in in_memory[name].graph.initializer}
        assert streamed.keys() == held.keys(), name
        assert all(np.array_equal(streamed[k], held[k]) for k in held), name
        proto = onnx.load(str(q / g.file), load_external_data=False)
        assert all(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer
                   if t.data_type == TensorProto.INT8 and len(t.raw_data) >= 1024), name


def test_a_tied_head_reads_the_embedding_table_once_stored(tmp_path, fp_package, table_of):
    """A tied LM head is Gemm(transB=1) over the embedding's own initializer in every graph: the FP
    package stores the table once, the INT8 one stores one int8 table that the Gather reads and the
    head dequantizes, and ONNX Runtime runs that head as an integer QGemm."""
    import onnxruntime as ort

    fp = fp_package("gla-tiny")
    assert ZOO["gla-tiny"].tie_embeddings
    V, D = ZOO["gla-tiny"].vocab_size, ZOO["gla-tiny"].d_model
    for name in read_package(fp).graphs:
        sites = graph_sites(read_package(fp).raw, name).weights
        assert sites["lm_head"].initializer == sites["embed"].initializer and sites["lm_head"].axis == 0
    assert [t["shape"] for t in read_package(fp).raw["weights"]["tensors"]].count([V, D]) == 1
    assert not any(t["shape"] == [D, V] for t in read_package(fp).raw["weights"]["tensors"])
    q = quantize_package(fp, tmp_path / "q", W8A8(), table_of("gla-tiny"))
    tables = [t for t in read_package(q).raw["weights"]["tensors"] if t["shape"] in ([V, D], [D, V])]
    assert [(t["dtype"], t["shape"]) for t in tables] == [("int8", [V, D])]
    proto = onnx.load(str(q / "decode.onnx"), load_external_data=False)
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    assert {a.name: a.i for a in gemm.attribute}.get("transB") == 1
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(q / "decode.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node}
    assert "QGemm" in ops and "Gemm" not in ops
