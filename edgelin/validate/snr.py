"""SNR (dB) of a candidate's tensors against the reference: per state (through Session) and per
layer output (block outputs of the prefill graph, read with ONNX Runtime)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from edgelin.runtime.package import Manifest, StateSpec

BLOCK = re.compile(r"^(?:/model)?/blocks\.(\d+)/")


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - cand) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))


def dequantize_state(spec_raw: dict, a: np.ndarray) -> np.ndarray:
    q = spec_raw.get("quant")
    if not q:
        return a.astype(np.float32)
    return (a.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])


def block_outputs(proto: onnx.ModelProto) -> dict[str, str]:
    """layer name ('blocks.3') -> the tensor that leaves that block (its residual output)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for node in proto.graph.node:
        for x in node.input:
            src = producer.get(x)
            if src is None:
                continue
            m_src, m_dst = BLOCK.match(src.name), BLOCK.match(node.name)
            if m_src and (m_dst is None or m_dst.group(1) != m_src.group(1)) and src.op_type == "Add":
                out[f"blocks.{m_src.group(1)}"] = x
    return out


def layer_snr(ref_dir: Path, ref_m: Manifest, cand_dir: Path, cand_m: Manifest, ids: np.ndarray, chunks: int = 8) -> dict[str, float]:
    """SNR of every block output, prefill graph, over the first `chunks` chunks of `ids` [B, T]."""
    import onnxruntime as ort

    if "prefill" not in ref_m.graphs or "prefill" not in cand_m.graphs:
        return {}
    protos = [onnx.load(str(d / m.graphs["prefill"].file)) for d, m in ((ref_dir, ref_m), (cand_dir, cand_m))]
    names = block_outputs(protos[0])
    cand_tensors = {o for n in protos[1].graph.node for o in n.output}
    names = {k: v for k, v in names.items() if v in cand_tensors}
    sessions, outs = [], []
    for p in protos:
        p.graph.output.extend(onnx.helper.make_tensor_value_info(v, onnx.TensorProto.FLOAT, None) for v in names.values())
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(p.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
        outs.append([o.name for o in sessions[-1].get_outputs()])
    C = ref_m.graphs["prefill"].tokens
    states = [{s.input: np.zeros(s.shape_for(ids.shape[0]), s.np_dtype) for s in m.states} for m in (ref_m, cand_m)]
    signal = {k: 0.0 for k in names}
    noise = {k: 0.0 for k in names}
    for c in range(min(chunks, ids.shape[1] // C)):
        feeds = ids[:, c * C:(c + 1) * C]
        res = []
        for i, (sess, m) in enumerate(zip(sessions, (ref_m, cand_m))):
            r = dict(zip(outs[i], sess.run(None, {"input_ids": feeds, **states[i]})))
            states[i] = {s.input: r[s.output] for s in m.states}
            res.append(r)
        for k, v in names.items():
            a, b = res[0][v].astype(np.float64), res[1][v]
            signal[k] += float(np.sum(a ** 2))
            noise[k] += float(np.sum((a - b) ** 2))
    return {k: (float(10 * np.log10(signal[k] / noise[k])) if noise[k] > 0 else float("inf"))
            for k in sorted(names, key=lambda s: int(s.split(".")[1]))}


def state_snr(ref_specs: list[StateSpec], cand_raw: list[dict], ref_state: dict, cand_state: dict) -> dict[str, float]:
    raw = {s["input"]: s for s in cand_raw}
    return {s.input: snr_db(ref_state[s.input], dequantize_state(raw[s.input], cand_state[s.input])) for s in ref_specs}
