"""Full-QDQ quantization for Qualcomm HTP (`edgelin export --profile qnn-htp`).

HTP runs quantized operators only: every float tensor an operator reads must be the output of a
DequantizeLinear from uint8/uint16 (activations) or from 8/4-bit integers (weights). edgelin's own
pass (`edgelin.quantize.qdq`) quantizes the MatMuls and keeps the recurrence in float, which suits
CPUs; HTP needs QDQ everywhere. This module hands each static step graph to ONNX Runtime's QNN
tooling (`get_qnn_qdq_config` + `quantize`, what ORT ships for its QNN provider) and adds what that
tooling lacks for a recurrent model:

- calibration data: real text streamed through the FP step graphs with the states carried (the
  same schedule as `edgelin.calibration`), cut into batch-1 feeds, so state and gate ranges are
  the ones a long sequence reaches, not a zero state's;
- the states: each `past_key_values.*` input and its `present.*` output get one uint16 grid,
  shared by the decode and prefill graphs, symmetric about 0 and wide enough for `state_headroom`
  x the largest |state| of edgelin's calibration table. A state leaves the graph through
  QuantizeLinear -> DequantizeLinear and enters through QuantizeLinear -> DequantizeLinear on the
  same grid, so it is carried exactly as 16-bit integers while the graph boundary stays float
  (the all-zero initial state of docs/FORMAT.md is then exactly zero);
- masks: a `Where` that fills with -inf (causal and window masks) fills with `MASK_FILL` instead,
  so the tensor has a finite range to quantize;
- embedding tables: 8-bit like the other weights (ORT would give a Gather table the activation type);
- constants ORT leaves float (the fill value of a `Where`): stored as the activation type and read
  through a DequantizeLinear, like every other operand.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import onnx
from onnx import version_converter

from edgelin.calibration.collect import calibrate_package
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.quantize.primitives import ActQuant, activation_qparams

Feeds = dict[str, np.ndarray]
OPSET = 21  # standard 16-bit QuantizeLinear / DequantizeLinear
# exp(-32) ~ 1e-14: a masked score or decay still vanishes next to any unmasked one, and a
# [-32, 0] range keeps a uint16 step of 5e-4
MASK_FILL = -32.0


@dataclass(frozen=True)
class HtpScheme:
    """What `--profile qnn-htp` quantizes to.

    Attributes:
        act_bits: activations (and gates, logits) as uint16 (16, `--int16`, the default) or uint8 (8, `--int8`).
        weight_bits: MatMul weights and other constants as 8-bit integers (per tensor, as QNN's MatMul takes them).
        state_headroom: a state's grid covers this x the largest |state| seen in calibration.
        max_feeds: at most this many calibration feeds per graph are given to ONNX Runtime's calibrator.
    """

    name: ClassVar[str] = "htp-qdq"
    act_bits: int = 16
    weight_bits: int = 8
    state_headroom: float = 2.0
    max_feeds: int = 256

    def __post_init__(self) -> None:
        if self.act_bits not in (8, 16):
            raise EdgelinError(f"{self.name}: activations are 8 or 16 bits on HTP, got {self.act_bits}")
        if self.weight_bits != 8:
            raise EdgelinError(f"{self.name}: weights are 8 bits (QNN's MatMul takes one scale per tensor; 4-bit "
                               f"per-tensor weights lose too much), got {self.weight_bits}")
        if not self.state_headroom >= 1.0:
            raise EdgelinError(f"{self.name}: state_headroom must be >= 1, got {self.state_headroom}")
        if self.max_feeds < 1:
            raise EdgelinError(f"{self.name}: max_feeds must be >= 1, got {self.max_feeds}")

    @property
    def label(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}"

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": f"{self.label}-htp", "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "state": "uint16-qdq", "state_headroom": self.state_headroom, "observer": "minmax",
                "quantizer": "onnxruntime.quantization (get_qnn_qdq_config)"}


def calibration_feeds(fp_dir: Path, text: str, streams: int, tokens: int, decode_every: int = 4
                      ) -> dict[str, list[Feeds]]:
    """graph -> batch-1 feeds (input_ids + states) met while streaming `text` through the FP package.

    The schedule is `calibrate_package`'s: chunks of the prefill length, every `decode_every`-th
    one token by token through the decode graph, states carried from chunk to chunk.
    """
    import onnxruntime as ort

    from edgelin.runtime.package import read_package
    from edgelin.runtime.tokenizer import load_tokenizer

    m = read_package(fp_dir)
    ids = make_streams(load_tokenizer(fp_dir, m).encode(text), streams, tokens)
    sess = {name: ort.InferenceSession(str(fp_dir / g.file), providers=["CPUExecutionProvider"])
            for name, g in m.graphs.items()}
    outs = {name: [o.name for o in s.get_outputs()] for name, s in sess.items()}
    feeds: dict[str, list[Feeds]] = {name: [] for name in m.graphs}

    def step(graph: str, chunk: np.ndarray, state: Feeds) -> Feeds:
        feed = {"input_ids": chunk, **state}
        feeds[graph].extend({k: v[b:b + 1] for k, v in feed.items()} for b in range(chunk.shape[0]))
        res = dict(zip(outs[graph], sess[graph].run(None, feed)))
        return {s.input: res[s.output] for s in m.states}

    C = m.graphs["prefill"].tokens if "prefill" in m.graphs else 1
    n, T = ids.shape
    state = {s.input: np.zeros(s.shape_for(n), s.np_dtype) for s in m.states}
    for i, a in enumerate(range(0, T, C)):
        b = min(a + C, T)
        if "prefill" not in m.graphs or b - a < C or i % decode_every == 0:
            for t in range(a, b):
                state = step("decode", ids[:, t:t + 1], state)
        else:
            state = step("prefill", ids[:, a:b], state)
    return feeds


def _thin(items: list[Feeds], most: int) -> list[Feeds]:
    """At most `most` items, evenly spaced, so every depth of the state is represented."""
    if len(items) <= most:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, most).round().astype(int)]


def state_overrides(entries: list[dict], table: CalibrationTable, headroom: float) -> dict[str, list[dict]]:
    """ORT TensorQuantOverrides: one uint16 grid per state, for its input and its output name."""
    from onnxruntime.quantization import QuantType

    out: dict[str, list[dict]] = {}
    for s in entries:
        if s["kind"] == "window_mask":
            lo, hi = 0.0, 1.0
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


def embedding_overrides(proto: onnx.ModelProto) -> dict[str, list[dict]]:
    """Gather tables (2-D float initializers) as 8-bit per tensor, like the MatMul weights."""
    from onnxruntime.quantization import QuantType

    inits = {t.name: t for t in proto.graph.initializer}
    return {n.input[0]: [{"quant_type": QuantType.QUInt8}] for n in proto.graph.node
            if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2}


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


def quantize_graph_htp(proto: onnx.ModelProto, feeds: list[Feeds], overrides: dict[str, list[dict]],
                       scheme: HtpScheme) -> onnx.ModelProto:
    """One static FP32 step graph -> its full-QDQ form (ORT's QNN configuration, states on `overrides`)."""
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    if not feeds:
        raise EdgelinError("no calibration feeds for a step graph: the calibration text is too short")
    act = QuantType.QUInt16 if scheme.act_bits == 16 else QuantType.QUInt8
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    proto = finite_masks(version_converter.convert_version(proto, OPSET))
    with tempfile.TemporaryDirectory(prefix="edgelin-htp-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(proto, str(src))
        if qnn_preprocess_model(str(src), str(pre)):
            src = pre
        init = {**embedding_overrides(proto), **{k: [dict(v[0])] for k, v in overrides.items()}}
        config = get_qnn_qdq_config(str(src), _Reader(feeds), activation_type=act, weight_type=QuantType.QUInt8,
                                    init_overrides=init)
        config.extra_options["ForceQuantizeNoInputCheck"] = True  # a Where of two constants still gets QDQ
        with _quiet():
            quantize(str(src), str(dst), config)
        out = dequantize_constants(onnx.load(str(dst)), ActQuant(scheme.act_bits))
    onnx.checker.check_model(out)
    return out


def quantize_htp_package(fp_dir: str | Path, static_dir: str | Path, out_dir: str | Path, scheme: HtpScheme,
                         text: str, *, streams: int = 4, tokens: int = MIN_STREAM_TOKENS, force: bool = False,
                         progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Quantize a package for HTP.

    Args:
        fp_dir: the FP32 package (symbolic batch), streamed for calibration.
        static_dir: the same package made static for qnn-htp (`apply_profile`): the graphs quantized.
        out_dir: the quantized package (written atomically; must not exist unless `force`).
        scheme: `HtpScheme(...)`.
        text: calibration text.
    Returns:
        `out_dir`.
    """
    from edgelin.runtime.package import read_package, write_package

    fp_dir, static_dir = Path(fp_dir), Path(static_dir)
    step = progress or (lambda *a: None)
    table = calibrate_package(fp_dir, text, streams=streams, tokens=tokens, progress=lambda d, t: step("calibrate", d, t))
    feeds = calibration_feeds(fp_dir, text, streams, tokens)
    m = read_package(static_dir)
    overrides = state_overrides(m.raw["states"], table, scheme.state_headroom)
    with tempfile.TemporaryDirectory(prefix="edgelin-htp-") as tmp:
        files: dict[str, Path | bytes] = {n: static_dir / n for n in m.files if not n.endswith(".onnx")}
        for i, (name, g) in enumerate(m.graphs.items()):
            step("quantize (qdq)", i, len(m.graphs))
            proto = quantize_graph_htp(onnx.load(str(static_dir / g.file)), _thin(feeds[name], scheme.max_feeds),
                                       overrides, scheme)
            path = Path(tmp) / g.file
            onnx.save(proto, str(path))
            files[g.file] = path
        step("quantize (qdq)", len(m.graphs), len(m.graphs))
        files["calibration.json"] = table.to_json().encode()
        # states stay float32 at the boundary (no "quant" entry); their uint16 grids are recorded here
        grids = {s["input"]: {"scale": float(overrides[s["input"]][0]["scale"]),
                              "zero_point": int(overrides[s["input"]][0]["zero_point"]), "dtype": "uint16"}
                 for s in m.raw["states"]}
        doc = {k: v for k, v in m.raw.items() if k not in ("files", "format_version", "backends")}
        doc.update(precision={**scheme.to_dict(), "state_grids": grids},
                   calibration={"file": "calibration.json", **table.summary()})
        return write_package(out_dir, files, doc, force=force)


def run_htp_pipeline(fp_dir: str | Path, out_dir: str | Path, scheme: HtpScheme, text: str, *,
                     streams: int = 4, tokens: int = MIN_STREAM_TOKENS, horizon: int = 8192, validate: bool = True,
                     force: bool = False, on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """FP package -> static (qnn-htp profile) -> full QDQ -> validated package at `out_dir`.

    Calibration uses the head of `text` (what its streams need), validation the rest, against the
    FP package. The HTP graphs take batch 1, so validation runs one stream of up to `horizon` tokens.
    Returns:
        The validation dict (`compare_packages`), or {} when `validate` is False.
    """
    import shutil

    from edgelin.exporters.profiles import apply_profile
    from edgelin.quantize.pipeline import split_text
    from edgelin.runtime.package import read_package, write_package
    from edgelin.validate.metrics import compare_packages
    from edgelin.validate.report import report_files

    fp_dir, out = Path(fp_dir), Path(out_dir)
    step = on_progress or (lambda *a: None)
    if not text or not text.strip():
        raise EdgelinError("the calibration text is empty")
    calib, rest = split_text(fp_dir, text, streams, tokens)
    with tempfile.TemporaryDirectory(prefix="edgelin-htp-", dir=out.parent if out.parent.exists() else None) as tmp:
        static = Path(tmp) / "static"
        shutil.copytree(fp_dir, static)
        apply_profile(static, "qnn-htp")
        staged = quantize_htp_package(fp_dir, static, Path(tmp) / "quantized", scheme, calib, streams=streams,
                                      tokens=tokens, progress=step)
        result: dict[str, Any] = {}
        files: dict[str, Path | bytes] = {}
        if validate:
            result = compare_packages(fp_dir, staged, rest, horizon=horizon, streams=1,
                                      progress=lambda d, t: step("validate", d, t))
            result.update(candidate=str(out), calibration_text_reused=rest is calib)
            files = {f"report/{k}": v for k, v in report_files(result).items()}
        m = read_package(staged)
        files.update({name: staged / name for name in m.files})
        write_package(out, files, {k: v for k, v in m.raw.items() if k not in ("files", "format_version")}, force=force)
    return result
