"""Full-QDQ quantization for Qualcomm HTP (`edgelin export --profile qnn-htp`).

HTP runs quantized operators only: every float tensor an operator reads must be the output of a
DequantizeLinear from uint8/uint16 (activations) or from 8/4-bit integers (weights). edgelin's own
pass (`edgelin.quantize.qdq`) quantizes the MatMuls and keeps the recurrence in float, which suits
CPUs; HTP needs QDQ everywhere. This module hands each static step graph to ONNX Runtime's QNN
tooling (`get_qnn_qdq_config` + `quantize`, what ORT ships for its QNN provider) and adds what that
tooling lacks for a recurrent model (the package-level steps are in `htp_package.py`):

- calibration data: real text streamed through the FP step graphs with the states carried (the
  same schedule as `edgelin.calibration`), cut into batch-1 feeds, so state and gate ranges are
  the ones a long sequence reaches, not a zero state's (`htp_package.calibration_feeds`);
- the states: each `past_key_values.*` input and its `present.*` output get one uint16 grid,
  shared by the decode and prefill graphs, symmetric about 0 and wide enough for `state_headroom`
  x the largest |state| of edgelin's calibration table. A state leaves the graph through
  QuantizeLinear -> DequantizeLinear and enters through QuantizeLinear -> DequantizeLinear on the
  same grid, so it is carried exactly as 16-bit integers while the graph boundary stays float
  (the all-zero initial state of docs/FORMAT.md is then exactly zero);
- masks: a `Where` that fills with -inf (causal and window masks) fills with `MASK_FILL` instead,
  so the tensor has a finite range to quantize;
- the linear layers: int8 / int4 weights with one scale per output channel (`HtpScheme.linear_overrides`;
  ORT's QNN config would use one per tensor), and uint8 embedding tables;
- constants ORT leaves float (the fill value of a `Where`): stored as the activation type and read
  through a DequantizeLinear, like every other operand.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import version_converter

from edgelin.atomic import scratch_dir
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.primitives import ActQuant, activation_qparams
from edgelin.sites import PRODUCT_OPS, GraphSites, activation_inputs, weight_readers

Feeds = dict[str, np.ndarray]
OPSET = 21  # standard 16-bit QuantizeLinear / DequantizeLinear
# exp(-32) ~ 1e-14: a masked score or decay still vanishes next to any unmasked one, and a
# [-32, 0] range keeps a uint16 step of 5e-4
MASK_FILL = -32.0


@dataclass(frozen=True)
class HtpScheme:
    """What `--profile qnn-htp` quantizes to. Everything not named here is uint16: activations,
    gates, norms, the recurrence, logits, states (uint8 on all of it costs gla-1m +73% loss).

    Attributes:
        weight_bits: linear-layer weights as int8 (8) or int4 (4), symmetric, one scale per output
            channel (ONNX Runtime's QNN provider runs such a MatMul as QNN FullyConnected).
        matmul_act_bits: the linear layers' activation inputs as uint16 (16) or uint8 (8).
        state_headroom: a state's grid covers this x the largest |state| seen in calibration.
        max_feeds: at most this many calibration feeds per graph are given to ONNX Runtime's calibrator.
    """

    weight_bits: int = 8
    matmul_act_bits: int = 16
    state_headroom: float = 2.0
    max_feeds: int = 256

    def __post_init__(self) -> None:
        if self.weight_bits not in (4, 8):
            raise EdgelinError(f"HTP weights are 8 or 4 bits, got {self.weight_bits}")
        if self.matmul_act_bits not in (8, 16):
            raise EdgelinError(f"HTP activations are 8 or 16 bits, got {self.matmul_act_bits}")
        if not self.state_headroom >= 1.0:
            raise EdgelinError(f"state_headroom must be >= 1, got {self.state_headroom}")
        if self.max_feeds < 1:
            raise EdgelinError(f"max_feeds must be >= 1, got {self.max_feeds}")

    @property
    def label(self) -> str:
        return f"w{self.weight_bits}a{self.matmul_act_bits}"

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": f"{self.label}-htp", "weight_bits": self.weight_bits, "act_bits": self.matmul_act_bits,
                "granularity": "per_channel", "other_activations": "uint16", "state": "uint16-qdq",
                "state_headroom": self.state_headroom, "observer": "minmax",
                "quantizer": "onnxruntime.quantization (get_qnn_qdq_config)"}

    def linear_overrides(self, proto: onnx.ModelProto, sites: GraphSites, table: CalibrationTable,
                         graph: str) -> dict[str, list[dict]]:
        """ORT TensorQuantOverrides for the declared linear layers and embedding tables.

        uint8 inputs take the MSE range of edgelin's calibration table (as `--int8` does on the CPU;
        ORT's min-max range costs gla-1m's W8A8 a larger KL); uint16 keeps ORT's min-max.
        """
        from onnxruntime.quantization import QuantType

        weight = QuantType.QInt8 if self.weight_bits == 8 else QuantType.QInt4
        out: dict[str, list[dict]] = {}
        for site in sites.weights.values():
            if site.kind == "embedding":
                out[site.initializer] = [{"quant_type": QuantType.QUInt8}]  # ORT would give it the activation type
                continue
            out[site.initializer] = [{"quant_type": weight, "symmetric": True, "axis": site.axis}]
            for _, act in activation_inputs(proto, site) if self.matmul_act_bits == 8 else ():
                spec: dict[str, Any] = {"quant_type": QuantType.QUInt8}
                if act in table.graphs.get(graph, {}):
                    lo, hi = table.range(graph, act, "mse")
                    spec.update(rmin=np.array(min(lo, 0.0), np.float32), rmax=np.array(max(hi, 0.0), np.float32))
                out[act] = [spec]
        return out


def state_overrides(entries: list[dict], table: CalibrationTable, headroom: float) -> dict[str, list[dict]]:
    """ORT TensorQuantOverrides: one uint16 grid per state, for its input and its output name."""
    from onnxruntime.quantization import QuantType

    out: dict[str, list[dict]] = {}
    for s in entries:
        if s["kind"] in ("position", "seen") or s.get("policy") == "float":
            # token counts (learned positions, a window ring's `seen` < 2 x window): whole numbers,
            # exact on this grid of step 1 up to 65535
            lo, hi = 0.0, 65535.0
        else:
            a = table.state_absmax(s["input"], s["output"]) * headroom
            lo, hi = -a, a
        scale, zero = activation_qparams(lo, hi, ActQuant(16))
        spec = {"quant_type": QuantType.QUInt16, "scale": np.array(scale, np.float32),
                "zero_point": np.array(zero, np.uint16)}
        out[s["input"]] = [dict(spec)]
        out[s["output"]] = [dict(spec)]
    return out


def finite_masks(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose Where nodes fill with MASK_FILL instead of -inf; other non-finite constants are refused."""
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inits = {t.name: t for t in proto.graph.initializer}
    where_fills = {n.input[i] for n in proto.graph.node if n.op_type == "Where" for i in (1, 2)}
    for name, t in inits.items():
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        a = numpy_helper.to_array(t)
        if np.isfinite(a).all():
            continue
        if name not in where_fills or np.isnan(a).any() or (a == np.inf).any():
            raise EdgelinError(f"constant {name} holds NaN or Inf outside a mask fill; HTP cannot quantize it")
        t.CopyFrom(numpy_helper.from_array(np.where(np.isneginf(a), MASK_FILL, a).astype(a.dtype), name))
    return proto


def dequantize_constants(proto: onnx.ModelProto, spec: ActQuant) -> onnx.ModelProto:
    """Every float initializer a compute node still reads directly becomes integers + DequantizeLinear, in place."""
    from onnx import helper, numpy_helper

    from edgelin.quantize.primitives import quantize_activation_np

    inits = {t.name: t for t in proto.graph.initializer}
    done: dict[str, str] = {}
    dq_nodes = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name not in inits or inits[name].data_type != onnx.TensorProto.FLOAT:
                continue
            if name not in done:
                a = numpy_helper.to_array(inits[name])
                scale, zero = activation_qparams(float(a.min()), float(a.max()), spec)
                q = numpy_helper.from_array(quantize_activation_np(a, scale, zero, spec), f"{name}_htp_q")
                proto.graph.initializer.extend([q, numpy_helper.from_array(np.array(scale, np.float32), f"{name}_htp_scale"),
                                                numpy_helper.from_array(np.array(zero, spec.np_dtype), f"{name}_htp_zero")])
                dq_nodes.append(helper.make_node("DequantizeLinear", [q.name, f"{name}_htp_scale", f"{name}_htp_zero"],
                                                 [f"{name}_htp_dq"], name=f"{name}_htp_DQ"))
                done[name] = f"{name}_htp_dq"
            node.input[i] = done[name]
    nodes = dq_nodes + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs advice on the root logger and its sessions warn about unused initializers."""
    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


class _Reader:
    """ORT's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, items: list[Feeds]):
        self.items = iter(items)

    def get_next(self) -> Feeds | None:
        return next(self.items, None)


def untie_head(proto: onnx.ModelProto, sites: GraphSites) -> GraphSites:
    """Give a tied head's products their own copy of the embedding table, in place; returns the sites
    that say so. ORT's QDQ quantizer gives one initializer one quantization, and the Gather's output
    inherits its table's: shared with the head, the rows would come out as int8 weights, not uint16
    activations."""
    heads = [s for s in sites.linears() if any(e.kind == "embedding" and e.initializer == s.initializer
                                               for e in sites.weights.values())]
    weights = dict(sites.weights)
    for site in heads:
        table = next(t for t in proto.graph.initializer if t.name == site.initializer)
        copy = onnx.TensorProto()
        copy.CopyFrom(table)
        copy.name = f"{site.initializer}_{site.name}"
        proto.graph.initializer.append(copy)
        for node, i in weight_readers(proto, site.initializer):
            if node.op_type in PRODUCT_OPS:
                node.input[i] = copy.name
        weights[site.name] = dataclasses.replace(site, initializer=copy.name)
    return GraphSites(weights, sites.norms, sites.blocks)


def quantize_graph_htp(proto: onnx.ModelProto, feeds: list[Feeds], overrides: dict[str, list[dict]],
                       scheme: HtpScheme, table: CalibrationTable, graph: str, sites: GraphSites) -> onnx.ModelProto:
    """One static FP32 step graph -> its full-QDQ form (ORT's QNN configuration, states on `overrides`)."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    if not feeds:
        raise EdgelinError("no calibration feeds for a step graph: the calibration text is too short")

    proto = finite_masks(version_converter.convert_version(proto, OPSET))
    sites = untie_head(proto, sites)
    with scratch_dir("htp") as tmp:
        src, pre, dst = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "qdq.onnx"
        onnx.save(proto, str(src))
        if qnn_preprocess_model(str(src), str(pre)):
            src = pre
        init = {**scheme.linear_overrides(proto, sites, table, graph), **{k: [dict(v[0])] for k, v in overrides.items()}}
        config = get_qnn_qdq_config(str(src), _Reader(feeds), activation_type=QuantType.QUInt16,
                                    weight_type=QuantType.QUInt8, init_overrides=init)
        config.extra_options["ForceQuantizeNoInputCheck"] = True  # a Where of two constants still gets QDQ
        with _quiet():
            quantize(str(src), str(dst), config)
        out = dequantize_constants(onnx.load(str(dst)), ActQuant(16))
    onnx.checker.check_model(out)
    return out
