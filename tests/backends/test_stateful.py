"""openvino-stateful keeps the states inside OpenVINO and equals the stateless graphs; snapshot, restore, reset."""
import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Session, load_state, save_state
from edgelin.runtime.session import LiveState

TOL = 1e-5


@pytest.fixture(scope="module")
def sessions(fp_packages):
    pkg = fp_packages["hybrid-tiny"]  # conv, gla and sliding-window states
    return Session(pkg, backend="openvino", threads=1), Session(pkg, backend="openvino-stateful", threads=1)


def test_stateful_equals_stateless_step_by_step(sessions):
    stateless, stateful = sessions
    ids = np.random.default_rng(0).integers(0, 256, (1, 80))
    a, b = stateless.new_state(), stateful.new_state()
    la, a = stateless.forward(ids[:, :40], a)  # prefill chunks + decode, then decode only
    lb, b = stateful.forward(ids[:, :40], b)
    assert isinstance(b, LiveState)
    assert np.abs(la - lb).max() <= TOL
    for t in range(40, 80):
        la, a = stateless.forward(ids[:, t:t + 1], a)
        lb, b = stateful.forward(ids[:, t:t + 1], b)
        assert np.abs(la - lb).max() <= TOL, t
    for key, value in a.items():
        assert b[key].dtype == value.dtype and np.abs(b[key] - value).max() <= TOL, key


def test_snapshot_restore_and_reset(sessions, tmp_path):
    _, s = sessions
    ids = np.random.default_rng(1).integers(0, 256, (1, 30))
    _, live = s.forward(ids[:, :20], s.new_state())
    snap = dict(live)  # snapshot: copies OpenVINO's variables (query_state)
    first, _ = s.forward(ids[:, 20:], live)
    again, _ = s.forward(ids[:, 20:], snap)  # restore (set_state) and replay
    assert np.array_equal(first, again)
    fresh, _ = s.forward(ids[:, :20], s.new_state())  # a zero state resets
    replay, _ = s.forward(ids[:, :20], s.new_state())
    assert np.array_equal(fresh, replay)
    path = save_state(tmp_path / "s.npz", snap, s.manifest)
    loaded, _ = s.forward(ids[:, 20:], load_state(path, s.manifest))
    assert np.array_equal(first, loaded)


def test_advanced_live_state_is_gone(sessions):
    _, s = sessions
    _, old = s.forward(np.array([[1, 2, 3]]), s.new_state())
    s.forward(np.array([[4]]), old)
    with pytest.raises(EdgelinError, match="advanced by a later forward"):
        dict(old)
    with pytest.raises(EdgelinError, match="batch 1"):
        s.forward(np.array([[1], [2]]), s.new_state(batch=2))
