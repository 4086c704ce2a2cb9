"""Static step graphs: window attention over the ring's filled slots, and its full-window static form."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgelin.exporters.static import make_static


def _graph(package, name: str) -> onnx.ModelProto:
    manifest = json.loads((package / "manifest.json").read_text())
    return onnx.load(str(package / manifest["graphs"][name]["file"]))


def _feeds(session: ort.InferenceSession, seen: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for i in session.get_inputs():
        if i.name.endswith(".seen"):
            v = np.full(i.shape, seen, np.float32)
        elif "int" in i.type:
            v = rng.integers(0, 200, i.shape).astype(np.int64)
        else:
            v = rng.standard_normal(i.shape).astype(np.float32)
        feeds[i.name] = v
    return feeds


@pytest.mark.parametrize("graph", ["decode", "verify"])
def test_full_window_static_form_equals_the_filled_length_form(fp_package, graph):
    """The dynamic form reads the filled slots up to a Range end that `seen` gives; the static form
    reads the whole window, so no shape depends on the data. Both compute the same, from an empty, a
    part-filled, a just-full and a wrapped window."""
    proto = _graph(fp_package("hybrid-tiny"), graph)
    full = make_static(proto, 1)
    assert not any(n.op_type == "Range" for n in full.graph.node), "a data-dependent Range is left"
    assert any(n.op_type == "Range" for n in proto.graph.node), "the exported graph lost its filled-length Range"
    a, b = ort.InferenceSession(full.SerializeToString()), ort.InferenceSession(proto.SerializeToString())
    window = next(i.shape[2] for i in a.get_inputs() if i.name.endswith(".key"))
    rng = np.random.default_rng(0)
    for seen in (0, 5, window, window + 3):
        feeds = _feeds(a, seen, rng)
        for x, y in zip(a.run(None, feeds), b.run(None, feeds)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
