"""The graph pass: one FP step graph + scheme + calibration table -> a quantized step graph.

What it writes (opset 21, standard ONNX except MatMulNBits):
  * MatMul with a constant weight [K, N]:
      int8  -> DequantizeLinear(int8 [K, N], scale [N], axis=1) -> MatMul
      int4  -> MatMulNBits (com.microsoft, uint4 + zero points, block G) or, with Int4Format.QDQ,
               DequantizeLinear(uint4 [K, N], scale/zero [K/G, N], axis=0, block_size=G) -> MatMul
    and its activation input through QuantizeLinear -> DequantizeLinear (uint8 / uint16, per tensor),
    which ONNX Runtime's CPU provider fuses into integer MatMul kernels; W4A8's MatMulNBits instead
    takes the float activation and computes in int8 (accuracy_level 4: activations quantized per
    block of K as it runs). A 4-bit layer whose K is
    not a multiple of the group size falls back to int8 (recorded in the precision map).
  * the embedding table as int8 per row; its Gather reads int8 rows and scales them
    (Gather -> Cast -> Mul by the gathered row scales), so a step dequantizes only its tokens' rows.
  * states: graph inputs and outputs become int16 (symmetric, per tensor, scale shared by every
    graph) with a DequantizeLinear after each input and a QuantizeLinear before each output;
    states whose policy is "float" (a window ring's `seen` count) stay float. In the verify graph the
    state after each position (`present.*.{t}`) is rounded to int16 there, the next position reads it
    back through a DequantizeLinear (what the decode graph's next step would read), and the stacked
    output `present.*.steps` is int16.
Which initializers are weights, and what each one is, comes from the graph's declared sites
(edgelin/sites.py); the pass never guesses from node names or op patterns. A weight may be read by
MatMul, Gemm or Einsum along any declared output axis; MatMulNBits needs a MatMul's [K, N].
Integers come from `edgelin.quantize.primitives`, so QAT and export round identically.
The FP graph may keep its weights in external data: each one is read from its file when its layer
is quantized, so the pass holds one FP weight at a time; those it leaves float are loaded at the end.
Given the new package's `WeightStore`, each large tensor goes to its file as it is made, and a weight
the package's other graphs share (decode, prefill, verify) is quantized once: the pass then holds
one layer's tensors, whatever the model's size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.exporters.weights import MIN_BYTES, WeightStore, check_weighted_model
from edgelin.quantize.primitives import ActQuant, WeightQuant, activation_qparams, quantize_weight_np
from edgelin.quantize.schemes import Int4Format, LayerPrecision, QuantScheme
from edgelin.runtime.package import position_output, steps_output
from edgelin.sites import PRODUCT_OPS, GraphSites, WeightSite, activation_inputs, weight_readers

OPSET = 21
NP_TO_ONNX = {np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
              np.dtype(np.int16): TensorProto.INT16, np.dtype(np.uint16): TensorProto.UINT16}


def _initializer_array(t: TensorProto, base: Path | None) -> np.ndarray:
    """An initializer's values; external data is read from its file under `base` (this tensor only,
    the proto is not changed)."""
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    if base is None:
        raise EdgelinError(f"initializer {t.name} keeps its values in an external file, and no folder was given")
    info = {e.key: e.value for e in t.external_data}
    if Path(info.get("location", "")).name != info.get("location"):
        raise EdgelinError(f"initializer {t.name} points outside its package: {info.get('location')!r:.80}")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    count = int(np.prod(t.dims, dtype=np.int64))
    a = np.fromfile(base / info["location"], dtype, count, offset=int(info.get("offset", 0)))
    if a.size != count:
        raise EdgelinError(f"{base / info['location']} ends inside initializer {t.name}")
    return a.reshape(tuple(t.dims))


class _Graph:
    """A tiny builder over one GraphProto: new initializers and nodes, unique names."""

    def __init__(self, proto: onnx.ModelProto, name: str, base: Path | None = None, store: WeightStore | None = None):
        self.proto, self.g, self.name, self.base, self.store = proto, proto.graph, name, base, store
        self.inits = {i.name: i for i in self.g.initializer}
        self.new_nodes: list[tuple[int, onnx.NodeProto]] = []  # (insert before index, node)
        # (weight, axis) -> (int8 initializer, scale initializer, scales)
        self.int8: dict[tuple[str, int], tuple[str, str, np.ndarray]] = {}

    def add_init(self, name: str, array: np.ndarray, onnx_type: int | None = None, key: tuple | None = None) -> str:
        """A new initializer; a large one goes straight to the store (under `key`, when given)."""
        if onnx_type is not None:
            t = helper.make_tensor(name, onnx_type, array.shape, array.flatten().tolist())
        elif self.store is not None and array.nbytes >= MIN_BYTES:
            t = self.store.external(self.name, name, array, key)
        else:
            t = numpy_helper.from_array(array, name)
        self._append(t)
        return name

    def reuse(self, name: str, key: tuple) -> bool:
        """Initializer `name` reading what the store already holds under `key`; False when it holds nothing."""
        t = self.store.reuse(self.name, name, key) if self.store is not None else None
        if t is not None:
            self._append(t)
        return t is not None

    def _append(self, t: TensorProto) -> None:
        self.g.initializer.append(t)
        self.inits[t.name] = t

    def array(self, name: str) -> np.ndarray:
        return _initializer_array(self.inits[name], self.base)

    def source(self, name: str) -> tuple | None:
        """Where the FP initializer `name` lies in its package's weights file: the same place in every
        graph of the package for the same weight. None for one held inside the graph."""
        t = self.inits[name]
        if t.data_location != TensorProto.EXTERNAL:
            return None
        info = {e.key: e.value for e in t.external_data}
        return info.get("location"), int(info.get("offset", 0)), tuple(t.dims), t.data_type

    def keep_float(self) -> None:
        """The FP weights left float: into the store (or the graph), read one at a time."""
        for t in self.g.initializer:
            if t.data_location != TensorProto.EXTERNAL or self.store is not None and self.store.holds(self.name, t.name):
                continue
            array = _initializer_array(t, self.base)
            if self.store is None:
                t.CopyFrom(numpy_helper.from_array(array, t.name))
            else:
                t.CopyFrom(self.store.external(self.name, t.name, array, ("float", self.source(t.name))))

    def drop_unused(self) -> None:
        used = {x for n in self.g.node for x in n.input}
        for name in [n for n in self.inits if n not in used]:
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


def _int8_ints(b: _Graph, name: str, axis: int, shared: dict) -> tuple[str, str, np.ndarray]:
    """Weight `name` (any rank) -> (int8 initializer, scale initializer, scales [shape[axis]]), one
    scale per index of `axis`; added once. A weight another graph of the package has quantized into
    the store already is read from there (its scales kept in `shared`), not quantized again."""
    if (name, axis) not in b.int8:
        tag = f"_axis{axis}" if any(n == name for n, _ in b.int8) else ""
        qn, sn = f"{name}_int8{tag}", f"{name}_scale{tag}"
        src = b.source(name)
        key = ("int8", src, axis) if src is not None else None
        if key is not None and key in shared and b.reuse(qn, key):
            scale = shared[key]
        else:
            rows = np.moveaxis(b.array(name), axis, 0)
            q, scale, _ = quantize_weight_np(rows.reshape(rows.shape[0], -1), WeightQuant(8))
            scale = scale[:, 0].astype(np.float32)
            b.add_init(qn, np.ascontiguousarray(np.moveaxis(q.reshape(rows.shape), 0, axis)), key=key)
            if key is not None:
                shared[key] = scale
        b.add_init(sn, scale)
        b.int8[name, axis] = qn, sn, scale
    return b.int8[name, axis]


def _int8_weight(b: _Graph, name: str, axis: int, shared: dict) -> str:
    """Weight `name` (any rank) -> DequantizeLinear output name, one scale per index of `axis`."""
    qn, sn, scale = _int8_ints(b, name, axis, shared)
    zn = b.add_init(f"{name}_zero_point", np.zeros(scale.shape, np.int8))
    b.new_nodes.append((0, helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dq"], name=f"{name}_DQ", axis=axis)))
    return f"{name}_dq"


def _int8_gather(b: _Graph, node: onnx.NodeProto, before: int, name: str, shared: dict) -> None:
    """Gather(table, ids) -> Gather(int8 table, ids) * Gather(row scales, ids): only the rows read are
    dequantized (a DequantizeLinear of the whole table would run on every step). Exactly DQ's values."""
    qn, sn, scale = _int8_ints(b, name, 0, shared)
    rows = f"{sn}_rows"
    if rows not in b.inits:
        b.add_init(rows, scale.reshape(-1, 1))
    ids, out = node.input[1], node.output[0]
    node.input[0], node.output[0] = qn, f"{out}_int8"
    b.new_nodes += [(before, helper.make_node("Gather", [rows, ids], [f"{out}_scale"], name=f"{node.name}_scale", axis=0)),
                    (before, helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{node.name}_cast",
                                              to=TensorProto.FLOAT)),
                    (before, helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequant"))]


def _int4_qdq_weight(b: _Graph, name: str, ints: tuple, spec: WeightQuant, axis: int) -> str:
    """Blocks of G along the input axis of a 2-D weight; `axis` is its output axis as stored."""
    q, scale, zero = ints  # [N, K], [N, K/G], [N, K/G]
    if axis == 1:
        q, scale, zero = q.T, scale.T, zero.T
    qn = b.add_init(f"{name}_uint4", np.ascontiguousarray(q), TensorProto.UINT4)
    sn = b.add_init(f"{name}_scale", np.ascontiguousarray(scale))
    zn = b.add_init(f"{name}_zero_point", np.ascontiguousarray(zero.astype(np.uint8)), TensorProto.UINT4)
    b.new_nodes.append((0, helper.make_node("DequantizeLinear", [qn, sn, zn], [f"{name}_dq"], name=f"{name}_DQ",
                                            axis=1 - axis, block_size=spec.group_size)))
    return f"{name}_dq"


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _layer_spec(b: _Graph, site: WeightSite, scheme: QuantScheme) -> tuple[LayerPrecision, WeightQuant | None]:
    """(precision, weight spec) of one layer; a 4-bit layer whose input size is not a multiple of
    the group size (or that is not 2-D) falls back to int8."""
    prec = scheme.precision_of(site.name)
    spec = scheme.weight_quant(prec)
    dims = tuple(b.inits[site.initializer].dims)
    if spec is not None and spec.bits == 4 and (len(dims) != 2 or dims[1 - site.axis] % spec.group_size):
        prec, spec = LayerPrecision.INT8, WeightQuant(8)
    return prec, spec


def _nbits_ok(node: onnx.NodeProto, site: WeightSite, names: set[str]) -> bool:
    """MatMulNBits replaces a MatMul whose second input is the [K, N] weight itself (`names`: the
    initializer and its Identity aliases; the verify graph may read a layer once per position)."""
    return node.op_type == "MatMul" and site.axis == 1 and node.input[1] in names


def _matmul_nbits(b: _Graph, node: onnx.NodeProto, ints: tuple, spec: WeightQuant, a_input: str,
                  int8_compute: bool = False, base: str | None = None) -> onnx.NodeProto:
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
    base = base or node.input[1]
    if f"{base}_nbits" in b.inits:  # a layer read by several products (once per position in the verify graph)
        ins = [a_input, f"{base}_nbits", f"{base}_nbits_scale", f"{base}_nbits_zero_point"]
    else:
        ins = [a_input, b.add_init(f"{base}_nbits", packed), b.add_init(f"{base}_nbits_scale", scale.astype(np.float32).reshape(-1)),
               b.add_init(f"{base}_nbits_zero_point", zp_packed.reshape(-1))]
    return helper.make_node("MatMulNBits", ins, list(node.output), name=node.name + "NBits", domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=G, **({"accuracy_level": 4} if int8_compute else {}))


def _int4_ints(b: _Graph, site: WeightSite, spec: WeightQuant, scheme: QuantScheme,
               hessians: dict[str, np.ndarray] | None, cache: dict) -> tuple:
    """(q, scale, zero) in torch layout ([out, in]) for a 4-bit layer: RTN, or GPTQ when the scheme asks."""
    layer, key = site.name, (site.name, spec)
    if key not in cache:
        w = b.array(site.initializer)
        w = w if site.axis == 0 else w.T
        if scheme.gptq:
            if not hessians or layer not in hessians:
                raise EdgelinError(f"GPTQ needs calibration inputs for layer {layer}; run it through the pipeline")
            from edgelin.quantize.gptq import gptq_quantize

            cache[key] = gptq_quantize(w, hessians[layer], spec)
        else:
            cache[key] = quantize_weight_np(w, spec)
    return cache[key]


def borrowed_ranges(table: CalibrationTable, graph: str, proto: onnx.ModelProto, sites: GraphSites,
                    source: str, source_proto: onnx.ModelProto, source_sites: GraphSites) -> CalibrationTable:
    """`table` with entries for `graph` taken from graph `source`, layer by layer: the input of each
    declared linear layer in `graph` gets the entry of that layer's input in `source`.

    The verify graph computes what the decode graph computes, K positions at a time, so it must
    quantize with the decode graph's scales (per tensor and static: a batched row then rounds as the
    decode step's row does); it is never calibrated itself. A layer read by several products (a
    mixer without its own `steps` unrolls `step`, one product per position) takes its source's
    inputs in turn.
    """
    entries: dict[str, dict] = {}
    for site in sites.linears():
        src = source_sites.weights.get(site.name)
        have = list(dict.fromkeys(act for _, act in activation_inputs(source_proto, src))) if src else []
        want = list(dict.fromkeys(act for _, act in activation_inputs(proto, site)))
        if want and not have or len(want) % max(len(have), 1) and len(have) > 1:
            raise EdgelinError(f"the {graph} graph reads layer {site.name} in {len(want)} products, the {source} graph "
                               f"in {len(have)}; cannot give it the {source} graph's ranges")
        for i, act in enumerate(want):
            try:
                entries[act] = table.graphs[source][have[i % len(have)]]
            except KeyError:
                raise EdgelinError(f"the calibration table has no range for {have[i % len(have)]} in graph "
                                   f"{source!r}") from None
    return CalibrationTable({**table.graphs, graph: entries}, table.meta)


def state_qparams(entries: list[dict], table: CalibrationTable, scheme: QuantScheme) -> dict[str, dict]:
    """state input name -> {"scale", "zero_point", "bits"} for every state the scheme stores as integers."""
    spec = scheme.state_quant
    if spec is None:
        return {}
    out = {}
    for s in entries:
        if s.get("policy") == "float":
            continue
        a = table.state_absmax(s["input"], s["output"]) * scheme.state_headroom
        scale, zero = activation_qparams(-a, a, spec)
        out[s["input"]] = {"scale": float(scale), "zero_point": int(zero), "bits": spec.bits, "dtype": spec.np_dtype.name}
    return out


def _quantize_position_states(b: _Graph, qparams: dict[str, dict], entries: list[dict]) -> None:
    """The verify graph: the state after each position (`present.*.{t}`, its hand-off node's output)
    becomes the state's integers; the next position reads their DequantizeLinear, as a decode step
    reads the state the previous one wrote, and the stacked output `present.*.steps` gathers the
    integers (docs/FORMAT.md)."""
    outputs = {o.name: o for o in b.g.output}
    for entry in entries:
        stacked = steps_output(entry["output"])
        if entry["input"] not in qparams or stacked not in outputs:
            continue
        qp = qparams[entry["input"]]
        dtype = np.dtype(qp["dtype"])
        s = b.add_init(f"{stacked}_scale", np.array(qp["scale"], np.float32))
        z = b.add_init(f"{stacked}_zero_point", np.array(qp["zero_point"], dtype))
        t = 0
        while (after := next((i for i, n in enumerate(b.g.node) if position_output(entry["output"], t) in n.output),
                             None)) is not None:
            name = position_output(entry["output"], t)
            fout, fin = f"{name}_float", f"{name}_dq"
            for node in [*b.g.node, *(n for _, n in b.new_nodes)]:
                if node.output != [f"{name}_stacked"]:  # the stack gathers the integers
                    node.input[:] = [fin if x == name else x for x in node.input]
                node.output[:] = [fout if x == name else x for x in node.output]
            b.new_nodes.append((after + 1, helper.make_node("QuantizeLinear", [fout, s, z], [name], name=f"{name}_state_Q")))
            b.new_nodes.append((after + 1, helper.make_node("DequantizeLinear", [name, s, z], [fin], name=f"{name}_state_DQ")))
            stale = [v for v in b.g.value_info if v.name in (name, f"{name}_stacked")]  # float until now
            for v in stale:
                b.g.value_info.remove(v)
            t += 1
        outputs[stacked].type.tensor_type.elem_type = NP_TO_ONNX[dtype]


def _quantize_states(b: _Graph, qparams: dict[str, dict], entries: list[dict]) -> None:
    by_input = {s["input"]: s for s in entries}
    rename_in: dict[str, str] = {}  # what nodes read: a state input -> its dequantized value
    rename_out: dict[str, str] = {}  # what nodes write: a state output -> its float value
    added = []
    for inp in b.g.input:
        if inp.name not in qparams:
            continue
        qp, out_name = qparams[inp.name], by_input[inp.name]["output"]
        dtype = np.dtype(qp["dtype"])
        s = b.add_init(f"{inp.name}_scale", np.array(qp["scale"], np.float32))
        z = b.add_init(f"{inp.name}_zero_point", np.array(qp["zero_point"], dtype))
        fin, fout = f"{inp.name}_dq", f"{out_name}_float"
        rename_in[inp.name], rename_out[out_name] = fin, fout
        added.append((0, helper.make_node("DequantizeLinear", [inp.name, s, z], [fin], name=f"{inp.name}_state_DQ")))
        if any(o.name == out_name for o in b.g.output):  # the verify graph outputs its states stacked instead
            added.append((10 ** 9, helper.make_node("QuantizeLinear", [fout, s, z], [out_name],
                                                    name=f"{out_name}_state_Q")))
        inp.type.tensor_type.elem_type = NP_TO_ONNX[dtype]
        for o in b.g.output:
            if o.name == out_name:
                o.type.tensor_type.elem_type = NP_TO_ONNX[dtype]
    rename_in.update(rename_out)  # consumers of a renamed output inside the graph read the float one
    for node in [*b.g.node, *(n for _, n in b.new_nodes)]:  # e.g. the Q/DQ of a linear layer that reads a state
        if any(x in rename_in for x in node.input):
            node.input[:] = [rename_in.get(x, x) for x in node.input]
        if any(x in rename_out for x in node.output):
            node.output[:] = [rename_out.get(x, x) for x in node.output]
    b.new_nodes += added


def quantize_graph(proto: onnx.ModelProto, graph: str, scheme: QuantScheme, table: CalibrationTable,
                   states: dict[str, dict], entries: list[dict], sites: GraphSites,
                   hessians: dict[str, np.ndarray] | None = None, cache: dict | None = None,
                   base: Path | None = None, store: WeightStore | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Quantize one step graph (see the module docstring).

    Args:
        proto: the FP32 step graph (not modified).
        graph: its name in the package ("decode" / "prefill"), the key into `table`.
        scheme: the scheme, with per-layer overrides.
        table: calibration ranges of this package.
        states: `state_qparams(...)`, shared by every graph of the package.
        entries: the manifest's state entries.
        sites: the graph's declared sites (`edgelin.sites.graph_sites`).
        hessians: layer name -> GPTQ Hessian (`gptq.collect_hessians`), needed when `scheme.gptq`.
        cache: what the graphs of one package share: 4-bit integers by layer (GPTQ runs once), int8
            scales by weight.
        base: the folder of `proto`'s external data (its package), when its weights are not loaded.
        store: the new package's weights file; large initializers go there as they are made. None
            keeps every weight inside the returned proto.
    Returns:
        (quantized proto, effective precision per layer name).
    """
    proto = version_converter.convert_version(onnx.ModelProto.FromString(proto.SerializeToString()), OPSET)
    b = _Graph(proto, graph, base, store)
    cache = cache if cache is not None else {}
    precision: dict[str, str] = {}
    act_cache: dict[str, str] = {}
    w_cache: dict[str, str] = {}
    replace: dict[int, onnx.NodeProto] = {}
    nodes = list(b.g.node)
    position = {id(n): i for i, n in enumerate(nodes)}
    first_use: dict[str, int] = {}  # an activation's Q/DQ goes before its first reader
    for i, n in enumerate(nodes):
        for x in n.input:
            first_use.setdefault(x, i)
    for site in sites.linears():
        prec, spec = _layer_spec(b, site, scheme)
        precision[site.name] = prec.value
        if spec is None:
            continue
        ints = None
        if spec.bits == 4:
            ints = _int4_ints(b, site, spec, scheme, hessians, cache)
        nbits = spec.bits == 4 and scheme.int4_format == Int4Format.MATMUL_NBITS
        names = {site.initializer} | {n.output[0] for n in b.g.node if n.op_type == "Identity"
                                      and n.input[0] == site.initializer}
        for node, act in activation_inputs(b.proto, site):
            fused = nbits and _nbits_ok(node, site, names)
            # 8-bit activations into MatMulNBits: its int8 kernel quantizes them per block as it runs
            # (accuracy level 4), finer than one calibrated range and 2-3x faster than float compute
            a = act
            if scheme.act_bits and not (fused and scheme.act_bits == 8):
                lo, hi = table.range(graph, act, scheme.observer if scheme.act_bits == 8 else "minmax")
                scale, zero = activation_qparams(lo, hi, scheme.activations)
                a = _qdq_activation(b, act, scale, zero, scheme.activations, act_cache, first_use[act])
            if fused:
                replace[position[id(node)]] = _matmul_nbits(b, node, ints, spec, a, int8_compute=scheme.act_bits == 8,
                                                            base=site.initializer)
            else:
                node.input[list(node.input).index(act)] = a
        # a tied head shares its initializer with the embedding's Gather, which the embedding's site handles
        remaining = [(n, i) for n, i in weight_readers(b.proto, site.initializer)
                     if position[id(n)] not in replace and n.op_type != "Gather"]
        if remaining:
            key = f"{site.initializer}:{spec}"
            if key not in w_cache:
                w_cache[key] = (_int8_weight(b, site.initializer, site.axis, cache) if spec.bits == 8
                                else _int4_qdq_weight(b, site.initializer, ints, spec, site.axis))
            for node, i in remaining:
                node.input[i] = w_cache[key]
    for site in sites.weights.values():
        if site.kind != "embedding":
            continue
        tied = any(s.initializer == site.initializer for s in sites.linears())
        precision[site.name] = scheme.embedding.value
        if scheme.embedding == LayerPrecision.INT8:
            key = f"{site.initializer}:int8"
            for node, i in weight_readers(b.proto, site.initializer):
                if node.op_type in PRODUCT_OPS and tied:
                    continue  # the tied head's product: its own site chose its precision
                if node.op_type == "Gather" and i == 0 and _axis(node) == 0:
                    _int8_gather(b, node, position[id(node)] + 1, site.initializer, cache)
                    continue
                if key not in w_cache:
                    w_cache[key] = _int8_weight(b, site.initializer, 0, cache)
                node.input[i] = w_cache[key]
    _quantize_states(b, states, entries)
    _quantize_position_states(b, states, entries)
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
    b.drop_unused()
    b.keep_float()
    if any(n.domain == "com.microsoft" for n in b.g.node) and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    try:
        check_weighted_model(proto)
    except onnx.checker.ValidationError as e:
        raise EdgelinError(f"quantized {graph} graph failed the ONNX checker: {str(e).splitlines()[0]}") from None
    return proto, precision
