"""Deployment profiles: what a target accepts (static shapes, dtypes, an op allow-list), and the export step.

The op lists are written down from public documentation, as of 2026-11:
- qnn-htp: "Supported ONNX operators" of ONNX Runtime's QNN Execution Provider
  (onnxruntime-qnn docs/execution_providers/QNN-ExecutionProvider.md). The same page: "QNN EP does not
  support models with dynamic shapes", and HTP's quantized operators "typically support the uint8 and
  uint16 data types" (activations); weights 8-bit or 4-bit (int4/uint4 blocked DequantizeLinear,
  MatMulNBits).
- openvino-npu: OpenVINO's NPU device page: static shapes only, stateful models supported. Intel
  publishes NPU op coverage as conformance reports, not a list; ours is the ONNX ops the OpenVINO ONNX
  frontend maps onto the opset operations used by LLM graphs on NPU, a conservative subset (ConstantOfShape
  becomes a constant Broadcast; CumSum is one of the NPU compiler's software kernels). Where an NPU
  is present, `core.query_model(model, "NPU")` is the authority and `edgelin check` adds its answer.
- tvm: the operators TVM's Relax ONNX importer converts (read from the installed apache-tvm), plus
  the 4-bit limits found here: com.microsoft ops have no importer, and TVM 0.27 mis-sizes packed
  int4/uint4 initializers ("TensorCopyFromBytes: size mismatch").
- ort-cpu: every ONNX and com.microsoft op of ONNX Runtime's CPU provider; only the static shapes apply.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import onnx

from edgelin.errors import EdgelinError

QNN_HTP_OPS = frozenset("""
Abs Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Clip Concat Conv ConvTranspose
Cos CumSum DepthToSpace DequantizeLinear Div Einsum Elu Equal Exp Expand Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
HardSigmoid HardSwish Identity InstanceNormalization IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax LpNormalization MatMul Max MaxPool Mean Min Mod Mul Neg NonZero Not Or PRelu Pad
Pow QuantizeLinear Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu
RMSNormalization Reshape Resize RoiAlign Round RotaryEmbedding ScatterElements ScatterND Sigmoid Sign Sin
Slice Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Unsqueeze Upsample Where
com.microsoft.DequantizeLinear com.microsoft.FusedMatMul com.microsoft.Gelu com.microsoft.MatMulNBits
com.microsoft.QuantizeLinear com.microsoft.QuickGelu com.microsoft.RotaryEmbedding
com.microsoft.SimplifiedLayerNormalization
""".split())

OPENVINO_NPU_OPS = frozenset("""
Abs Add And Cast Clip Concat ConstantOfShape Conv Cos CumSum DequantizeLinear Div Einsum Equal Erf Exp Expand Flatten Gather Gelu
Gemm Greater GreaterOrEqual Identity LayerNormalization Less LessOrEqual Log MatMul Max Min Mul Neg Not Or
Pad Pow QuantizeLinear Reciprocal ReduceMax ReduceMean ReduceSum Relu Reshape Sigmoid Sin Slice Softmax Softplus
Split Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze Where
""".split())

UNSIGNED_ACTIVATIONS = frozenset({"uint8", "uint16"})
WEIGHTS_8_4 = frozenset({"int8", "uint8", "int4", "uint4"})
FOUR_BIT = frozenset({"int4", "uint4"})


@dataclass(frozen=True)
class Profile:
    """What one target accepts.

    Attributes:
        name: the profile / target name.
        ops: allowed op types ("Op" for the default domain, "domain.Op" otherwise); None: any.
        static: every graph input/output dimension must be a number.
        quantized_activations: dtypes a compute op's float inputs must be dequantized from (None: float is fine).
        weight_dtypes: dtypes weight initializers may be dequantized from (None: any).
        bad_initializer_dtypes: initializer dtypes the target's importer cannot read.
    """

    name: str
    ops: frozenset[str] | None
    static: bool = True
    quantized_activations: frozenset[str] | None = None
    weight_dtypes: frozenset[str] | None = None
    bad_initializer_dtypes: frozenset[str] = frozenset()


def _tvm_ops() -> frozenset[str]:
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    except ImportError:
        raise EdgelinError("checking for tvm needs apache-tvm: pip install apache-tvm") from None
    return frozenset(_get_convert_map())


def get_profile(name: str) -> Profile:
    """The profile called `name` (ort-cpu, qnn-htp, openvino-npu, tvm)."""
    if name == "ort-cpu":
        return Profile(name, None)
    if name == "qnn-htp":
        return Profile(name, QNN_HTP_OPS, quantized_activations=UNSIGNED_ACTIVATIONS, weight_dtypes=WEIGHTS_8_4)
    if name == "openvino-npu":
        return Profile(name, OPENVINO_NPU_OPS)
    if name == "tvm":
        # TVM's graphs are made static (batch 1) when compiled, so a symbolic batch is fine here
        return Profile(name, _tvm_ops(), static=False, bad_initializer_dtypes=FOUR_BIT)
    raise EdgelinError(f"unknown profile {name!r}; choose from {', '.join(PROFILE_NAMES)}")


PROFILE_NAMES = ("ort-cpu", "qnn-htp", "openvino-npu", "tvm")
EXPORT_PROFILES = ("ort-cpu", "qnn-htp", "openvino-npu")


def apply_profile(package_dir: str | os.PathLike, name: str) -> Path:
    """Make a package's step graphs static for profile `name` (batch 1, shapes folded), in place.

    Ops the target lacks are rewritten where an exact equivalent exists (`lowering.lower_graph`).
    The manifest records `"profile": {"name": ..., "batch": 1}`. Dtypes are the quantizer's job:
    `edgelin export --profile qnn-htp` runs `edgelin.quantize.htp` after this; `edgelin check`
    lists whatever remains.
    """
    from edgelin.exporters.lowering import lower_graph
    from edgelin.exporters.static import make_static
    from edgelin.exporters.weights import save_graphs
    from edgelin.runtime.package import read_package, write_package
    from edgelin.runtime.weights import WEIGHTS_FILE

    if name not in EXPORT_PROFILES:
        raise EdgelinError(f"unknown profile {name!r}; choose from {', '.join(EXPORT_PROFILES)}")
    root = Path(package_dir)
    manifest = read_package(root)
    doc = {k: v for k, v in manifest.raw.items() if k not in ("files", "format_version", "backends")}
    doc["profile"] = {"name": name, "batch": 1}
    graph_files = {g: spec.file for g, spec in manifest.graphs.items()}
    with TemporaryDirectory(prefix="edgelin-profile-") as tmp:
        files: dict[str, Path | bytes] = {n: root / n for n in manifest.files if n.split("/")[0] not in ("openvino", "tvm")
                                          and n not in graph_files.values() and n != WEIGHTS_FILE}
        protos = {g: lower_graph(make_static(onnx.load(str(root / f)), batch=1), get_profile(name).ops)
                  for g, f in graph_files.items()}
        paths, doc["weights"] = save_graphs(protos, graph_files, Path(tmp))
        return write_package(root, {**files, **paths}, doc, force=True)
