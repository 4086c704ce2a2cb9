"""The graph pass: one FP step graph + scheme + calibration table -> a quantized step graph.

What it writes (opset 21, standard ONNX except MatMulNBits):
  * MatMul with a constant weight [K, N]:
      int8  -> DequantizeLinear(int8 [K, N], scale [N], axis=1) -> MatMul
      int4  -> MatMulNBits (com.microsoft, uint4 + zero points, block G) or, with Int4Format.QDQ,
               DequantizeLinear(uint4 [K, N], scale/zero [K/G, N], axis=0, block_size=G) -> MatMul
    and its activation input through QuantizeLinear -> DequantizeLinear (uint8 / uint16, per tensor),
    which ONNX Runtime's CPU provider fuses into integer MatMul kernels. A 4-bit layer whose K is
    not a multiple of the group size falls back to int8 (recorded in the precision map).
  * the embedding table as int8 per row -> DequantizeLinear(axis=0) -> Gather.
  * states: graph inputs and outputs become int16 (symmetric, per tensor, scale shared by both
    graphs) with a DequantizeLinear after each input and a QuantizeLinear before each output;
    `window_mask` states stay float.
Integers come from `edgelin.quantize.primitives`, so QAT and export round identically.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.primitives import ActQuant, WeightQuant, activation_qparams, quantize_weight_np
from edgelin.quantize.schemes import Int4Format, LayerPrecision, QuantScheme

OPSET = 21
FLOAT_STATES_KINDS = {"window_mask"}
NP_TO_ONNX = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
              np.dtype(np.int16): TensorProto.INT16, np.dtype(np.uint16): TensorProto.UINT16}


def layer_name(node_name: str) -> str:
    """'/blocks.0/gk_proj/gk_proj.0/MatMul' -> 'blocks.0.gk_proj.0' (the torch module's name)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    if not parts:
        return node_name
    name, last = parts[0], parts[0]
    for p in parts[1:]:
        name += p[len(last):] if p.startswith(last + ".") else "." + p
        last = p
    return name


def canonical_layer_names(protos: dict[str, onnx.ModelProto]) -> dict[str, dict[str, str]]:
    """graph -> MatMul node name -> one layer name shared by every graph.

    The tracer scopes the decode graph (step methods) and the prefill graph (module calls)
    differently ('blocks.0.q_proj' vs 'model.blocks.0.mixer.q_proj'), so layers are matched by
    their weight bytes and named after the most complete scope, without the 'model.' prefix.
    """
    keyed: dict[str, list[tuple[str, str]]] = {}
    for graph, proto in protos.items():
        inits = {i.name: i for i in proto.graph.initializer}
        for node in weight_matmuls(proto):
            w = numpy_helper.to_array(inits[node.input[1]])
            key = hashlib.sha1(np.ascontiguousarray(w).tobytes() + bytes(str(w.shape), "ascii")).hexdigest()
            keyed.setdefault(key, []).append((graph, node.name))
    out: dict[str, dict[str, str]] = {g: {} for g in protos}
    for refs in keyed.values():
        names = [layer_name(n).removeprefix("model.") for _, n in refs]
        best = max(names, key=lambda n: (len(n), n))
        for graph, node_name in refs:
            out[graph][node_name] = best
    return out


def is_weight_matmul(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """A MatMul whose second input is a 2-D float initializer: one of the model's linear layers."""
    return (node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
            and inits[node.input[1]].data_type == TensorProto.FLOAT)


def weight_matmuls(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The weight MatMul nodes of a graph, in graph order."""
    inits = {i.name: i for i in proto.graph.initializer}
    return [n for n in proto.graph.node if is_weight_matmul(n, inits)]


class _Graph:
    """A tiny builder over one GraphProto: new initializers and nodes, unique names."""

    def __init__(self, proto: onnx.ModelProto):
        self.proto, self.g = proto, proto.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert before index, node)

    def add_init(self, name: str, array: np.ndarray, onnx_type: int | None = None) -> str:
        if onnx_type is None:
            t = numpy_helper.from_array(array, name)
        else:
            t = helper.make_tensor(name, onnx_type, array.shape, array.flatten().tolist())
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def drop_init(self, name: str) -> None:
        if not any(name in n.input for n in self.g.node):
            self.g.initializer.remove(self.inits.pop(name))


def _qdq_activation(b: _Graph, tensor: str, scale: np.float32, zero: int, spec: ActQuant, cache: dict,
                    before: int) -> str:
    if tensor not in cache:
        s = b.add_init(f"{tensor}_scale", np.array(scale, np.float32))
        z = b.add_init(f"{tensor}_zero_point", np.array(zero, spec.np_dtype))
        b.new_nodes.append((before, helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tensor}_quantized"], name=f"{tensor}_Q")))
        b.new_nodes.append((before, helper.make_node("DequantizeLinear", [f"{tensor}_quantized", s, z], [f"{tensor}_dq"], name=f"{tensor}_DQ")))
        cache[tensor] = f"{tensor}_dq"
    return cache[tensor]


def _int8_weight(b: _Graph, name: str, w: np.ndarray) -> str:
    """w [K, N] -> DequantizeLinear output name."""
    q, scale, _ = quantize_weight_np(w.T, WeightQuant(8))  # torch layout [N, K]
    qn = b.add_init(f"{name}_int8", np.ascontiguousarray(q.T))
    sn = b.add_init(f"{name}_scale", scale[:, 0].astype(np.float32))
    zn = b.add_init(f"{name}_zero_point", np.zeros(q.shape[0], np.int8))
    b.new_nodes.append((0, helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dq"], name=f"{name}_DQ", axis=1)))
    return f"{name}_dq"


def _int4_qdq_weight(b: _Graph, name: str, ints: tuple, spec: WeightQuant) -> str:
    q, scale, zero = ints  # [N, K], [N, K/G], [N, K/G]
    qn = b.add_init(f"{name}_uint4", np.ascontiguousarray(q.T), TensorProto.UINT4)
    sn = b.add_init(f"{name}_scale", np.ascontiguousarray(scale.T))
    zn = b.add_init(f"{name}_zero_point", np.ascontiguousarray(zero.T.astype(np.uint8)), TensorProto.UINT4)
    b.new_nodes.append((0, helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dq"], name=f"{name}_DQ",
                                            axis=0, block_size=spec.group_size)))
    return f"{name}_dq"


def _matmul_nbits(b: _Graph, node: onnx.NodeProto, ints: tuple, spec: WeightQuant, a_input: str) -> onnx.NodeProto:
    q, scale, zero = ints  # [N, K] 0..15, [N, K/G], [N, K/G]
    N, K = q.shape
    G = spec.group_size
    nb = K // G
    qb = q.reshape(N, nb, G // 2, 2)
    packed = (qb[..., 0] | (qb[..., 1] << 4)).astype(np.uint8)  # element 2i in the low nibble
    zp = zero.astype(np.uint8)
    if nb % 2:
        zp = np.concatenate([zp, np.zeros((N, 1), np.uint8)], 1)
    zp_packed = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    base = node.input[1]
    ins = [a_input, b.add_init(f"{base}_nbits", packed), b.add_init(f"{base}_nbits_scale", scale.astype(np.float32).reshape(-1)),
           b.add_init(f"{base}_nbits_zero_point", zp_packed.reshape(-1))]
    return helper.make_node("MatMulNBits", ins, list(node.output), name=node.name + "NBits", domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=G)


def _int4_ints(layer: str, w: np.ndarray, spec: WeightQuant, scheme: QuantScheme,
               hessians: dict[str, np.ndarray] | None, cache: dict) -> tuple:
    """(q, scale, zero) in torch layout for a 4-bit layer: RTN, or GPTQ when the scheme asks."""
    key = (layer, spec)
    if key not in cache:
        if scheme.gptq:
            if not hessians or layer not in hessians:
                raise EdgelinError(f"GPTQ needs calibration inputs for layer {layer}; run it through the pipeline")
            from edgelin.quantize.gptq import gptq_quantize

            cache[key] = gptq_quantize(w.T, hessians[layer], spec)
        else:
            cache[key] = quantize_weight_np(w.T, spec)
    return cache[key]


def state_qparams(entries: list[dict], table: CalibrationTable, scheme: QuantScheme) -> dict[str, dict]:
    """state input name -> {"scale", "zero_point", "bits"} for every state the scheme stores as integers."""
    spec = scheme.state_quant
    if spec is None:
        return {}
    out = {}
    for s in entries:
        if s["kind"] in FLOAT_STATES_KINDS:
            continue
        a = table.state_absmax(s["input"], s["output"]) * scheme.state_headroom
        scale, zero = activation_qparams(-a, a, spec)
        out[s["input"]] = {"scale": float(scale), "zero_point": int(zero), "bits": spec.bits, "dtype": spec.np_dtype.name}
    return out


def _quantize_states(b: _Graph, qparams: dict[str, dict], entries: list[dict]) -> None:
    by_input = {s["input"]: s for s in entries}
    for inp in b.g.input:
        if inp.name not in qparams:
            continue
        qp, out_name = qparams[inp.name], by_input[inp.name]["output"]
        dtype = np.dtype(qp["dtype"])
        s = b.add_init(f"{inp.name}_scale", np.array(qp["scale"], np.float32))
        z = b.add_init(f"{inp.name}_zero_point", np.array(qp["zero_point"], dtype))
        fin, fout = f"{inp.name}_dq", f"{out_name}_float"
        for node in b.g.node:
            node.input[:] = [fin if x == inp.name else x for x in node.input]
            node.output[:] = [fout if x == out_name else x for x in node.output]
        for node in b.g.node:  # consumers of the renamed output inside the graph
            node.input[:] = [fout if x == out_name else x for x in node.input]
        b.new_nodes.append((0, helper.make_node("DequantizeLinear", [inp.name, s, z], [fin], name=f"{inp.name}_DQ")))
        b.new_nodes.append((10 ** 9, helper.make_node("QuantizeLinear", [fout, s, z], [out_name], name=f"{out_name}_Q")))
        inp.type.tensor_type.elem_type = NP_TO_ONNX[dtype]
        for o in b.g.output:
            if o.name == out_name:
                o.type.tensor_type.elem_type = NP_TO_ONNX[dtype]


def quantize_graph(proto: onnx.ModelProto, graph: str, scheme: QuantScheme, table: CalibrationTable,
                   states: dict[str, dict], entries: list[dict], names: dict[str, str] | None = None,
                   hessians: dict[str, np.ndarray] | None = None, cache: dict | None = None
                   ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Quantize one step graph (see the module docstring).

    Args:
        proto: the FP32 step graph (not modified).
        graph: its name in the package ("decode" / "prefill"), the key into `table`.
        scheme: the scheme, with per-layer overrides.
        table: calibration ranges of this package.
        states: `state_qparams(...)`, shared by every graph of the package.
        entries: the manifest's state entries.
        names: MatMul node name -> layer name (`canonical_layer_names`); scope names otherwise.
        hessians: layer name -> GPTQ Hessian (`gptq.collect_hessians`), needed when `scheme.gptq`.
        cache: 4-bit integers by layer, shared between the graphs of one package (GPTQ runs once).
    Returns:
        (quantized proto, effective precision per layer name).
    """
    proto = version_converter.convert_version(onnx.ModelProto.FromString(proto.SerializeToString()), OPSET)
    b = _Graph(proto)
    precision: dict[str, str] = {}
    act_cache: dict[str, str] = {}
    w_cache: dict[str, str] = {}
    replace: dict[int, onnx.NodeProto] = {}
    nodes = list(b.g.node)
    for i, node in enumerate(nodes):
        if not is_weight_matmul(node, b.inits):
            continue
        layer = (names or {}).get(node.name) or layer_name(node.name).removeprefix("model.")
        prec = scheme.precision_of(layer)
        w = numpy_helper.to_array(b.inits[node.input[1]])
        spec = scheme.weight_quant(prec)
        if spec is not None and spec.bits == 4 and w.shape[0] % spec.group_size:
            prec, spec = LayerPrecision.INT8, WeightQuant(8)
        precision[layer] = prec.value
        if spec is None:
            continue
        a = node.input[0]
        if a not in b.inits and scheme.act_bits:
            lo, hi = table.range(graph, a, scheme.observer if scheme.act_bits == 8 else "minmax")
            scale, zero = activation_qparams(lo, hi, scheme.activations)
            a = _qdq_activation(b, a, scale, zero, scheme.activations, act_cache, i)
        ints = None
        if spec.bits == 4:
            ints = _int4_ints(layer, w, spec, scheme, hessians, cache if cache is not None else {})
        if spec.bits == 4 and scheme.int4_format == Int4Format.MATMUL_NBITS:
            replace[i] = _matmul_nbits(b, node, ints, spec, a)
            continue
        wname = node.input[1]
        key = f"{wname}:{spec}"
        if key not in w_cache:
            w_cache[key] = _int8_weight(b, wname, w) if spec.bits == 8 else _int4_qdq_weight(b, wname, ints, spec)
        node.input[0], node.input[1] = a, w_cache[key]
    for node in nodes:
        if node.op_type == "Gemm" and node.input[1] in b.inits:  # not produced by edgelin's exporter: left float
            precision[(names or {}).get(node.name) or layer_name(node.name).removeprefix("model.")] = "fp32"
        if node.op_type == "Gather" and node.input[0] in b.inits and len(b.inits[node.input[0]].dims) == 2:
            layer = layer_name(node.name).removeprefix("model.")
            precision[layer] = scheme.embedding.value
            if scheme.embedding == LayerPrecision.INT8:
                table_w = numpy_helper.to_array(b.inits[node.input[0]])
                q, scale, _ = quantize_weight_np(table_w, WeightQuant(8))  # one scale per token row
                name = node.input[0]
                qn, sn = b.add_init(f"{name}_int8", q), b.add_init(f"{name}_scale", scale[:, 0])
                zn = b.add_init(f"{name}_zero_point", np.zeros(q.shape[0], np.int8))
                b.new_nodes.append((0, helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dq"], name=f"{name}_DQ", axis=0)))
                node.input[0] = f"{name}_dq"
    _quantize_states(b, states, entries)
    # rebuild the node list in order: new nodes go right before the node they feed
    out: list[onnx.NodeProto] = []
    inserts = sorted(b.new_nodes, key=lambda t: t[0])
    j = 0
    for i, node in enumerate(nodes):
        while j < len(inserts) and inserts[j][0] <= i:
            out.append(inserts[j][1]); j += 1
        out.append(replace.get(i, node))
    out.extend(n for _, n in inserts[j:])
    del b.g.node[:]
    b.g.node.extend(out)
    for name in list(b.inits):
        b.drop_init(name)
    if any(n.domain == "com.microsoft" for n in b.g.node) and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise EdgelinError(f"quantized {graph} graph failed the ONNX checker: {str(e).splitlines()[0]}") from None
    return proto, precision
