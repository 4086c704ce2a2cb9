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
from edgelin.calibration.probe import Probe
from edgelin.calibration.streams import MIN_STREAM_TOKENS, make_streams
from edgelin.calibration.table import CalibrationTable
from edgelin.errors import EdgelinError
from edgelin.runtime.package import read_package
from edgelin.runtime.tokenizer import load_tokenizer
from edgelin.sites import GraphSites, activation_inputs, graph_sites

GATE_OPS = {"Sigmoid", "Softplus", "Exp"}


def observed_tensors(proto: onnx.ModelProto, sites: GraphSites) -> dict[str, str]:
    """tensor name -> role for one step graph: the declared linear layers' inputs, gate values,
    states and outputs."""
    roles: dict[str, str] = {}
    for site in sites.linears():
        for _, act in activation_inputs(proto, site):
            roles[act] = "matmul_input"
    for node in proto.graph.node:
        if node.op_type in GATE_OPS:
            roles.setdefault(node.output[0], "gate")
    for i in proto.graph.input:
        if i.name.startswith("past_key_values."):
            roles[i.name] = "state_in"
    for o in proto.graph.output:
        roles[o.name] = "state_out" if o.name.startswith("present.") else "output"
    return roles


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
    graphs = [name for name in ("decode", "prefill") if name in manifest.graphs]
    roles = {name: observed_tensors(onnx.load(str(root / manifest.graphs[name].file), load_external_data=False),
                                    graph_sites(manifest.raw, name)) for name in graphs}
    observers = {name: {t: TensorObserver(t) for t in r} for name, r in roles.items()}

    def observe(graph: str, feeds: dict[str, np.ndarray], outs: dict[str, np.ndarray]) -> None:
        for name, obs in observers[graph].items():
            obs.update(feeds[name] if name in feeds else outs[name])

    Probe(root, extra=roles).mixed_stream(ids, observe, decode_every, progress)
    n, T = ids.shape
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
