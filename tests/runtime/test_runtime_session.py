"""Session.forward: exact against a numpy reference, chunked prefill == all-decode, validation."""

import json

import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Session, write_package
from conftest import V, toy_manifest, toy_reference


def _decode_only(session, ids):
    state, out = session.new_state(ids.shape[0]), []
    for t in range(ids.shape[1]):
        lg, state = session.forward(ids[:, t:t + 1], state)
        out.append(lg)
    return np.concatenate(out, axis=1), state


@pytest.mark.parametrize("T", [1, 3, 4, 5, 9, 12])
def test_prefill_chunks_equal_all_decode_batch3(session, T):
    ids = np.random.default_rng(T).integers(0, V, size=(3, T))
    logits, state = session.forward(ids, session.new_state(3))
    ref_logits, ref_state = _decode_only(session, ids)
    assert logits.shape == (3, T, V)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for k in state:
        np.testing.assert_allclose(state[k], ref_state[k], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, toy_reference(ids), rtol=1e-4, atol=1e-4)


def test_state_carries_across_calls_and_is_not_modified(session):
    ids = np.random.default_rng(0).integers(0, V, size=(2, 7))
    s0 = session.new_state(2)
    a, s1 = session.forward(ids[:, :2], s0)
    b, _ = session.forward(ids[:, 2:], s1)
    assert all(not v.any() for v in s0.values())
    np.testing.assert_allclose(np.concatenate([a, b], 1), toy_reference(ids), rtol=1e-4, atol=1e-4)


def test_new_state_shapes(session):
    st = session.new_state(3)
    assert {k: v.shape for k, v in st.items()} == {
        "past_key_values.0.recurrent_state": (3, 8), "past_key_values.1.conv_state": (3, 2, 8)}
    assert all(v.dtype == np.float32 for v in st.values())


@pytest.mark.parametrize("ids, msg", [
    (np.array([[1, 256]]), "token id 256 is outside the vocabulary \\[0, 256\\)"),
    (np.array([[-1]]), "token id -1"),
    (np.zeros((1, 0), np.int64), "at least one token"),
    (np.array([1, 2]), "2-D integer array"),
    (np.array([[1.0]]), "2-D integer array"),
])
def test_bad_ids(session, ids, msg):
    with pytest.raises(EdgelinError, match=msg):
        session.forward(ids, session.new_state(ids.shape[0] if ids.ndim == 2 else 1))


def test_batch_mismatch(session):
    with pytest.raises(EdgelinError, match="batch 3 but the state was made for batch 2"):
        session.forward(np.zeros((3, 1), np.int64), session.new_state(2))
    with pytest.raises(EdgelinError, match="state does not match"):
        session.forward(np.zeros((1, 1), np.int64), {})


def test_unknown_backend(toy_package):
    with pytest.raises(EdgelinError, match="unknown back end 'nope'; available: .*ort"):
        Session(toy_package, backend="nope")


def test_manifest_graph_mismatch(tmp_path, toy_files):
    states = [dict(s) for s in toy_manifest()["states"]]
    states[1]["input"] = "past_key_values.1.other"
    pkg = write_package(tmp_path / "p", toy_files, toy_manifest(states=states))
    with pytest.raises(EdgelinError, match="decode.onnx in .* lacks input past_key_values.1.other"):
        Session(pkg)


def test_decode_only_package(tmp_path, toy_files):
    m = toy_manifest(graphs={"decode": {"file": "decode.onnx", "tokens": 1}})
    pkg = write_package(tmp_path / "p", {"decode.onnx": toy_files["decode.onnx"]}, m)
    ids = np.arange(6).reshape(1, 6)
    logits, _ = Session(pkg).forward(ids, Session(pkg).new_state(1))
    np.testing.assert_allclose(logits, toy_reference(ids), rtol=1e-4, atol=1e-4)
    assert json.loads((pkg / "manifest.json").read_text())["files"].keys() == {"decode.onnx"}
