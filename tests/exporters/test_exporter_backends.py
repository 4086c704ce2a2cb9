"""The torch -> ONNX exporter sits behind one function (`trace_to_onnx`); both exporters it can use
give loop-free step graphs that ONNX Runtime runs like the torch model (docs/DESIGN.md, "The ONNX exporter")."""
import re
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgelin
from edgelin.errors import EdgelinError
from edgelin.exporters import onnx as onnx_exporter
from edgelin.models import LM, ZOO
from edgelin.trace import StepGraph

TOL = 1e-4


def parity(model: LM, tokens: int, path: Path, batch: int = 3) -> float:
    """max |ORT - torch| over every output of the step graph, random tokens and states."""
    graph = StepGraph(model.eval(), tokens)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (batch, tokens))
    window = {e.layer: e.shape[1] for e in graph.entries if e.kind == "key"}
    states = [rng.integers(0, 2 * window[e.layer], (batch, *e.shape)) if e.kind == "seen"
              else rng.standard_normal((batch, *e.shape)) * 0.5 for e in graph.entries]
    inputs = [torch.from_numpy(ids), *(torch.from_numpy(s.astype(np.float32)) for s in states)]
    with torch.no_grad():
        want = graph(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(graph.output_names, {n: t.numpy() for n, t in zip(graph.input_names, inputs)})
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def export(name: str, tokens: int, exporter: str, path: Path, monkeypatch):
    monkeypatch.setattr(onnx_exporter, "EXPORTER", exporter)  # the one switch
    model = LM(ZOO[name]).init_weights()
    proto = onnx_exporter.export_step_graph(model, tokens, path)  # runs check_step_graph: no Loop/Scan/If
    return model, proto


@pytest.mark.parametrize("tokens", [1, 16])
@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny"])
def test_torchscript_step_graph_parity(name, tokens, tmp_path, monkeypatch):
    model, proto = export(name, tokens, "torchscript", tmp_path / "g.onnx", monkeypatch)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [onnx_exporter.OPSET]
    assert parity(model, tokens, tmp_path / "g.onnx") <= TOL


@pytest.mark.parametrize("tokens", [1, 16])
def test_dynamo_step_graph_parity(tokens, tmp_path, monkeypatch):
    """torch.export works on every tiny model (DESIGN.md); one model here, it is 10x slower to export."""
    with pytest.warns(UserWarning, match="writes opset 18"):  # no 18 -> 17 down-conversion exists
        model, proto = export("mamba-tiny", tokens, "dynamo", tmp_path / "g.onnx", monkeypatch)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [onnx_exporter.DYNAMO_MIN_OPSET]
    inits = {t.name for t in proto.graph.initializer}
    assert not [n for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in inits], "weights not folded"
    assert [i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input] == ["batch"] * len(proto.graph.input)
    assert parity(model, tokens, tmp_path / "g.onnx") <= TOL


def test_exporter_warnings_are_not_silenced(tmp_path):
    """Warnings raised while tracing reach the caller; only the two understood ones are filtered (the
    shape-specialized branches, checked by check_parity, and torch's own deprecated helper)."""

    class Warns(torch.nn.Module):
        def forward(self, x):
            warnings.warn("something the exporter should see", UserWarning)
            warnings.warn("Output nr 1. of the traced function does not match", torch.jit.TracerWarning)
            return x + 1

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        onnx_exporter.trace_to_onnx(Warns(), (torch.zeros(1, 2),), tmp_path / "g.onnx", input_names=["x"],
                                    output_names=["y"], exporter="torchscript")
    messages = [str(w.message) for w in seen]
    assert any("something the exporter should see" in m for m in messages), messages
    assert any("does not match" in m for m in messages), messages
    model = LM(ZOO["mamba-tiny"]).init_weights()
    graph = StepGraph(model.eval(), 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        onnx_exporter.trace_to_onnx(graph, graph.example_inputs(), tmp_path / "m.onnx", input_names=graph.input_names,
                                    output_names=graph.output_names, exporter="torchscript")
    assert not [w for w in seen if "The feature will be removed" in str(w.message)
                or "Converting a tensor to a Python" in str(w.message)]


def test_unknown_exporter_is_refused(tmp_path):
    graph = StepGraph(LM(ZOO["mamba-tiny"]).init_weights().eval(), 1)
    with pytest.raises(EdgelinError, match="unknown ONNX exporter"):
        onnx_exporter.trace_to_onnx(graph, graph.example_inputs(), tmp_path / "g.onnx", input_names=graph.input_names,
                                    output_names=graph.output_names, exporter="tvm")


def test_torch_onnx_export_is_called_in_one_place():
    """Switching exporters stays a one-file change: nothing else in edgelin calls torch.onnx.export."""
    root = Path(edgelin.__file__).parent
    callers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if re.search(r"onnx\.export\(", p.read_text()))
    assert callers == ["exporters/onnx.py"]
