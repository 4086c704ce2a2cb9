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

A profile is registered once (`register_profile`) with what `edgelin check` demands and how
`edgelin export --profile NAME` builds for it: which quantizer applies the scheme, the scheme used
when none is named, the export options the target cannot honour. The export pipeline is one
(`edgelin.api.export`, `edgelin.quantize.pipeline.run_pipeline`); a profile only fills it in.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import onnx

from edgelin.atomic import scratch_dir
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
    """What one target accepts, and how an export builds for it.

    Attributes:
        name: the profile / target name.
        ops: allowed op types ("Op" for the default domain, "domain.Op" otherwise); None: any.
        static: every graph input/output dimension must be a number (an export makes the graphs
            static, batch 1).
        quantized_activations: dtypes a compute op's float inputs must be dequantized from (None: float is fine).
        weight_dtypes: dtypes weight initializers may be dequantized from (None: any).
        bad_initializer_dtypes: initializer dtypes the target's importer cannot read.
        ops_from: reads `ops` when the profile is looked up (the list lives in an optional package).
        exportable: `edgelin export --profile NAME` builds for it (False: `edgelin check` only).
        quantizer: what applies a scheme: "qdq" (`edgelin.quantize.package.quantize_package`, the
            CPU pass) or "htp" (`edgelin.quantize.htp_package.quantize_htp_package`, QDQ everywhere).
        default_scheme: set for a target that runs quantized graphs only: an export always
            quantizes, with this scheme when none is named.
        int4_format: the 4-bit graph form of a named scheme (None: the scheme's default).
        refuses: export options the target cannot honour, as on the command line without "--".
        refusal_reason: why, for the error message.
    """

    name: str
    ops: frozenset[str] | None
    static: bool = True
    quantized_activations: frozenset[str] | None = None
    weight_dtypes: frozenset[str] | None = None
    bad_initializer_dtypes: frozenset[str] = frozenset()
    ops_from: Callable[[], frozenset[str]] | None = None
    exportable: bool = True
    quantizer: str = "qdq"
    default_scheme: str | None = None
    int4_format: str | None = None
    refuses: tuple[str, ...] = ()
    refusal_reason: str = ""

    def refuse(self, given: Iterable[str]) -> None:
        """Raise EdgelinError naming every option in `given` (command-line names) this target cannot honour."""
        given = set(given)
        bad = [f"--{option}" for option in self.refuses if option in given]
        if bad:
            raise EdgelinError(f"--profile {self.name} does not take {', '.join(bad)} ({self.refusal_reason})")


def _tvm_ops() -> frozenset[str]:
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    except ImportError:
        raise EdgelinError("checking for tvm needs apache-tvm: pip install apache-tvm") from None
    return frozenset(_get_convert_map())


PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    """Add `profile` to the targets `edgelin check` (and, if exportable, `edgelin export --profile`) know."""
    PROFILES[profile.name] = profile
    return profile


register_profile(Profile("ort-cpu", None))
register_profile(Profile(
    "qnn-htp", QNN_HTP_OPS, quantized_activations=UNSIGNED_ACTIVATIONS, weight_dtypes=WEIGHTS_8_4,
    quantizer="htp", default_scheme="int16",
    refuses=("w8", "state", "group-size", "gptq", "rotate", "smooth", "max-loss-increase"),
    refusal_reason="HTP reads quantized activations only, its 4-bit weights have one scale per output channel, and "
                   "smoothing, rotation, GPTQ and mixed precision are CPU-pipeline steps"))
# MatMulNBits is ONNX Runtime's own op; the NPU takes 4-bit weights as standard blocked DequantizeLinear
register_profile(Profile("openvino-npu", OPENVINO_NPU_OPS, int4_format="qdq"))
# TVM's graphs are made static (batch 1) when compiled, so a symbolic batch is fine here
register_profile(Profile("tvm", None, static=False, bad_initializer_dtypes=FOUR_BIT, ops_from=_tvm_ops,
                         exportable=False))


def get_profile(name: str) -> Profile:
    """The profile called `name` (ort-cpu, qnn-htp, openvino-npu, tvm)."""
    profile = PROFILES.get(name)
    if profile is None:
        raise EdgelinError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return dataclasses.replace(profile, ops=profile.ops_from()) if profile.ops_from else profile


def export_profile(name: str) -> Profile:
    """The profile `edgelin export --profile NAME` builds for."""
    profile = PROFILES.get(name)
    if profile is None or not profile.exportable:
        names = [p.name for p in PROFILES.values() if p.exportable]
        raise EdgelinError(f"--profile must be one of {', '.join(names)}, not {name!r}")
    return profile


def surviving_sites(sites: dict, proto: onnx.ModelProto) -> dict:
    """A sites record without the entries whose tensors the optimizer folded away (e.g. equal norm scales merged)."""
    inits = {i.name for i in proto.graph.initializer}
    tensors = {o for n in proto.graph.node for o in n.output}
    return {"weights": {k: w for k, w in sites["weights"].items() if w["initializer"] in inits},
            "norms": {k: v for k, v in sites.get("norms", {}).items() if v in inits},
            "blocks": {k: v for k, v in sites.get("blocks", {}).items() if v in tensors}}


def apply_profile(package_dir: str | os.PathLike, name: str, out_dir: str | os.PathLike | None = None, *,
                  force: bool = False) -> Path:
    """Make a package's step graphs fit profile `name`: static (batch 1, shapes folded) where the
    target wants static shapes, and ops the target lacks rewritten where an exact equivalent exists
    (`lowering.lower_graph`).

    The manifest records `"profile": {"name": ..., "batch": 1}` (without "batch" when it stays
    symbolic); compiled back-end graphs are dropped (they belong to the old graphs). Dtypes are the
    quantizer's job (`Profile.quantizer`); `edgelin check` lists whatever remains.

    Args:
        package_dir: the package.
        name: an export profile (ort-cpu, qnn-htp, openvino-npu).
        out_dir: where to write the new package (default: `package_dir`, in place).
        force: replace an existing `out_dir`.
    Returns:
        The new package's directory.
    """
    from edgelin.exporters.lowering import lower_graph
    from edgelin.exporters.static import make_static
    from edgelin.exporters.weights import save_graphs
    from edgelin.runtime.package import read_package, rewrite_package
    from edgelin.runtime.weights import WEIGHTS_FILE

    target = export_profile(name)
    root = Path(package_dir)
    manifest = read_package(root)
    graph_files = {g: spec.file for g, spec in manifest.graphs.items()}
    with scratch_dir("profile") as tmp:
        protos = {}
        for g, f in graph_files.items():
            proto = onnx.load(str(root / f))
            blocks = tuple(((manifest.raw["graphs"][g].get("sites") or {}).get("blocks") or {}).values())
            protos[g] = lower_graph(make_static(proto, batch=1, keep_names=blocks) if target.static else proto,
                                    target.ops, blocks)
        paths, weights = save_graphs(protos, graph_files, tmp)
        record = {"name": name, "batch": 1} if target.static else {"name": name}
        graphs = {g: {**spec, "sites": surviving_sites(spec["sites"], protos[g])} if "sites" in spec else spec
                  for g, spec in manifest.raw["graphs"].items()}
        return rewrite_package(root, out_dir or root, files=paths,
                               update={"profile": record, "weights": weights, "graphs": graphs},
                               drop_files=(WEIGHTS_FILE, *graph_files.values()),
                               drop_fields=("backends",), force=force or out_dir is None)
