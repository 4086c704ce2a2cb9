"""Stream real text through a package's FP step graphs, states carried, observing every tensor
that quantization will touch: MatMul activation inputs, state inputs and outputs, gate values
(Sigmoid / Softplus / Exp outputs) and logits.

Streams run side by side as one batch. Every stream is cut into chunks of the prefill graph's
length; every `decode_every`-th chunk goes through the decode graph token by token, the others
through the prefill graph, so both graphs are observed at every depth of the state. The first
chunk, from the zero state, goes through both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgelin.calibration.observers import TensorObserver
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.runtime.package import read_package
from edgelin.runtime.tokenizer import load_tokenizer

GATE_OPS = {"Sigmoid", "Softplus", "Exp"}


def observed_tensors(proto: onnx.ModelProto) -> dict[str, str]:
    """tensor name -> role for one step graph."""
    inits = {i.name for i in proto.graph.initializer}
    roles: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "MatMul" and node.input[0] not in inits:
            roles[node.input[0]] = "matmul_input"
        if node.op_type == "MatMul" and node.input[1] not in inits:
            roles.setdefault(node.input[1], "matmul_input")
        if node.op_type in GATE_OPS:
            roles.setdefault(node.output[0], "gate")
    for i in proto.graph.input:
        if i.name.startswith("past_key_values."):
            roles[i.name] = "state_in"
    for o in proto.graph.output:
        roles[o.name] = "state_out" if o.name.startswith("present.") else "output"
    return roles


def _session(proto: onnx.ModelProto, names: list[str]):
    import onnxruntime as ort

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    outs = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in outs and not n.startswith("past_key_values."))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # graph outputs survive fusion
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def calibrate_package(package_dir: str | Path, text: str, *, streams: int = 4, tokens: int = MIN_STREAM_TOKENS,
                      decode_every: int = 4, percentile: float = 99.99, bits: int = 8,
                      progress: Callable[[int, int], None] | None = None) -> CalibrationTable:
    """Calibrate the FP package at `package_dir` on `text`.

    Args:
        package_dir: an FP32 package (a quantized one is refused).
        text: calibration text (non-empty); tokenized with the package's tokenizer.
        streams, tokens: how many parallel streams and how many tokens each.
        decode_every: every n-th chunk runs through the decode graph (>= 1).
        percentile, bits: the percentile observer's level, the bit width the MSE/KL search targets.
        progress: called as progress(done_chunks, total_chunks).
    Returns:
        The `CalibrationTable` (nothing is written to disk).
    """
    root = Path(package_dir)
    manifest = read_package(root)
    if manifest.precision.get("scheme", "fp32") != "fp32":
        raise EdgelinError(f"{root} is already quantized ({manifest.precision.get('scheme')}); calibrate an FP package")
    if not text or not text.strip():
        raise EdgelinError("the calibration text is empty")
    if decode_every < 1:
        raise EdgelinError(f"decode_every must be >= 1 (the decode graph needs ranges too), got {decode_every}")
    ids = make_streams(load_tokenizer(root, manifest).encode(text), streams, tokens)
    graphs = {name: onnx.load(str(root / g.file)) for name, g in manifest.graphs.items() if name in ("decode", "prefill")}
    roles = {name: observed_tensors(p) for name, p in graphs.items()}
    sessions = {name: _session(p, list(roles[name])) for name, p in graphs.items()}
    observers = {name: {t: TensorObserver(t) for t in r} for name, r in roles.items()}
    out_names = {name: [o.name for o in s.get_outputs()] for name, s in sessions.items()}

    def run(graph: str, chunk: np.ndarray, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {"input_ids": chunk, **state}
        outs = dict(zip(out_names[graph], sessions[graph].run(None, feeds)))
        for name, obs in observers[graph].items():
            obs.update(feeds[name] if name in feeds else outs[name])
        return {s.input: outs[s.output] for s in manifest.states}

    C = manifest.graphs["prefill"].tokens if "prefill" in graphs else 1
    n, T = ids.shape
    state = {s.input: np.zeros(s.shape_for(n), s.np_dtype) for s in manifest.states}
    chunks = [(p, min(p + C, T)) for p in range(0, T, C)]
    for i, (a, b) in enumerate(chunks):
        use_decode = "prefill" not in graphs or b - a < C or i % decode_every == 0
        start = state
        if use_decode:
            for t in range(a, b):
                state = run("decode", ids[:, t:t + 1], state)
        if i == 0 or not use_decode:  # the zero-state start is seen by both graphs
            if "prefill" in graphs and b - a == C:
                state = run("prefill", ids[:, a:b], start)
        if progress:
            progress(i + 1, len(chunks))
    tables = {}
    for graph, obs in observers.items():
        tables[graph] = {}
        for name, o in obs.items():
            if o.count == 0:
                continue  # a graph never run (text shorter than one prefill chunk)
            role = roles[graph][name]
            entry = {"role": role, **o.summary(bits, percentile, search=role == "matmul_input")}
            if entry["role"] == "matmul_input" and o.channel_absmax is not None:
                entry["channel_absmax"] = [float(v) for v in o.channel_absmax]
            tables[graph][name] = entry
    meta = {"streams": int(n), "tokens_per_stream": int(T), "short_streams": bool(T < MIN_STREAM_TOKENS),
            "decode_every": decode_every, "percentile": percentile, "bits": bits}
    return CalibrationTable(tables, meta)
