"""A toy package meeting docs/FORMAT.md, built with onnx.helper (no torch).

Toy model, two layers, vocab 256, width 8:
  layer 0 recurrent_state h [B, D]:    h' = 0.9 h + E[tok]
  layer 1 conv_state      c [B, 2, D]: c' = [c[:, 1], E[tok]]   (last two embeddings, channel-last)
  logits = (h' + c'[:, 0]) @ W
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelin.runtime import write_package

V, D, DECAY, PREFILL = 256, 8, 0.9, 4
STATES = [
    {"input": "past_key_values.0.recurrent_state", "output": "present.0.recurrent_state",
     "layer": 0, "kind": "recurrent_state", "shape": ["batch", D], "dtype": "float32"},
    {"input": "past_key_values.1.conv_state", "output": "present.1.conv_state",
     "layer": 1, "kind": "conv_state", "shape": ["batch", 2, D], "dtype": "float32"},
]


def toy_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((V, D)).astype(np.float32), rng.standard_normal((D, V)).astype(np.float32)


def toy_graph(tokens: int, seed: int = 0) -> bytes:
    """The step graph for `tokens` tokens, unrolled (no Loop / Scan / If)."""
    E, W = toy_weights(seed)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [numpy_helper.from_array(E, "E"), numpy_helper.from_array(W, "W"),
             numpy_helper.from_array(np.array(DECAY, np.float32), "decay"),
             i64("one", [1]), i64("two", [2]), i64("zero", [0]), i64("ax1", [1])]
    nodes, h, c, outs = [], STATES[0]["input"], STATES[1]["input"], []
    for t in range(tokens):
        inits.append(i64(f"t{t}", t))
        n = lambda op, ins, **kw: (nodes.append(helper.make_node(op, ins, [f"{op}_{t}_{len(nodes)}"], **kw)),  # noqa: E731
                                   nodes[-1].output[0])[1]
        e = n("Gather", ["E", n("Gather", ["input_ids", f"t{t}"], axis=1)], axis=0)  # [B, D]
        h = n("Add", [n("Mul", [h, "decay"]), e])
        c = n("Concat", [n("Slice", [c, "one", "two", "ax1"]), n("Unsqueeze", [e, "ax1"])], axis=1)
        prev = n("Squeeze", [n("Slice", [c, "zero", "one", "ax1"]), "ax1"])
        outs.append(n("Unsqueeze", [n("MatMul", [n("Add", [h, prev]), "W"]), "ax1"]))  # [B, 1, V]
    nodes.append(helper.make_node("Concat", outs, ["logits"], axis=1))
    nodes.append(helper.make_node("Identity", [h], [STATES[0]["output"]]))
    nodes.append(helper.make_node("Identity", [c], [STATES[1]["output"]]))
    vi = lambda name, dt, shape: helper.make_tensor_value_info(name, dt, shape)  # noqa: E731
    graph = helper.make_graph(
        nodes, f"toy_step_{tokens}",
        [vi("input_ids", TensorProto.INT64, ["batch", tokens]),
         vi(STATES[0]["input"], TensorProto.FLOAT, ["batch", D]),
         vi(STATES[1]["input"], TensorProto.FLOAT, ["batch", 2, D])],
        [vi("logits", TensorProto.FLOAT, ["batch", tokens, V]),
         vi(STATES[0]["output"], TensorProto.FLOAT, ["batch", D]),
         vi(STATES[1]["output"], TensorProto.FLOAT, ["batch", 2, D])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def toy_reference(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Logits [B, T, V] of the toy model from zero state, in numpy."""
    E, W = toy_weights(seed)
    B, T = ids.shape
    h, c, out = np.zeros((B, D), np.float32), np.zeros((B, 2, D), np.float32), []
    for t in range(T):
        e = E[ids[:, t]]
        h = h * np.float32(DECAY) + e
        c = np.concatenate([c[:, 1:], e[:, None]], axis=1)
        out.append((h + c[:, 0]) @ W)
    return np.stack(out, axis=1)


def toy_manifest(**over) -> dict:
    m = {"format_version": 1, "producer": "edgelin tests", "architecture": {"name": "toy"},
         "source_layout": "edgelin", "vocab_size": V, "tokenizer": {"type": "bytes"},
         "graphs": {"decode": {"file": "decode.onnx", "tokens": 1},
                    "prefill": {"file": "prefill.onnx", "tokens": PREFILL}},
         "states": STATES, "precision": {"scheme": "fp32"}}
    return {**m, **over}


@pytest.fixture(scope="session")
def toy_files() -> dict[str, bytes]:
    return {"decode.onnx": toy_graph(1), "prefill.onnx": toy_graph(PREFILL)}


@pytest.fixture(scope="session")
def toy_package(tmp_path_factory, toy_files):
    """A read-only toy package (session-wide); tamper only with `fresh_package`."""
    return write_package(tmp_path_factory.mktemp("pkg") / "toy", toy_files, toy_manifest())


@pytest.fixture
def fresh_package(tmp_path, toy_package):
    """A private copy of the toy package, safe to modify."""
    return shutil.copytree(toy_package, tmp_path / "toy")


@pytest.fixture(scope="session")
def session(toy_package):
    from edgelin.runtime import Session
    return Session(toy_package, threads=1)


ZOO_PREFILL = 8  # prefill chunk of the zoo packages: prompts of a few dozen tokens cross several chunks


@pytest.fixture(scope="session")
def zoo_package(tmp_path_factory):
    """zoo_package(name) -> FP32 package of a tiny zoo model (prefill chunk 8), exported on first use.

    Weights use init_std 0.2 (registry_helpers.zoo_model) so logits are O(1) and a mismatch cannot hide."""
    made = {}

    def get(name: str, verify_tokens: int = 4):
        """verify_tokens: K of the verify graph (0: none, as older packages)."""
        if (name, verify_tokens) not in made:
            from edgelin.exporters.package import export_package
            from registry_helpers import zoo_model

            made[name, verify_tokens] = export_package(zoo_model(name), tmp_path_factory.mktemp("zoo") / name,
                                                       prefill_tokens=ZOO_PREFILL, verify_tokens=verify_tokens)
        return made[name, verify_tokens]

    return get


@pytest.fixture(scope="session")
def zoo_int8(tmp_path_factory, zoo_package):
    """zoo_int8(name) -> the W8A8 package (INT16 states) of zoo_package(name), calibrated on 2 x 128 tokens."""
    made = {}

    def get(name: str):
        if name not in made:
            from edgelin.calibration import calibrate_package, default_text
            from edgelin.quantize.package import quantize_package
            from edgelin.quantize.schemes import W8A8

            fp = zoo_package(name)
            table = calibrate_package(fp, default_text(), streams=2, tokens=128)
            made[name] = quantize_package(fp, tmp_path_factory.mktemp("zoo8") / name, W8A8(), table)
        return made[name]

    return get
