"""Hostile window-ring counts (`seen`, docs/FORMAT.md): a count outside [0, 2 x window), fractional or
not finite would send the ring's scatter outside its slots. Every way a state gets in (forward, a
saved snapshot, a batch row) refuses it with one line, and nothing is written."""
import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import BatchDecoder, Session, load_state, save_state

BAD = [-1.0, 0.5, 1e9, float("nan"), float("inf")]


@pytest.fixture(scope="module")
def swa(tmp_path_factory):
    from edgelin.exporters.package import export_package
    from edgelin.models import LM, ZOO

    pkg = export_package(LM(ZOO["hybrid-tiny"]).init_weights(), tmp_path_factory.mktemp("swa") / "hybrid", prefill_tokens=8)
    session = Session(pkg, threads=1)
    seen = next(s for s in session.manifest.states if s.kind == "seen")
    window = next(s for s in session.manifest.states if s.kind == "key" and s.layer == seen.layer).shape[2]
    return session, seen.input, window


def one_line_error(fn, *args) -> str:
    with pytest.raises(EdgelinError) as e:
        fn(*args)
    assert str(e.value) and "\n" not in str(e.value)
    return str(e.value)


def with_count(session, name, value):
    state = session.new_state(1)
    state[name] = np.full_like(state[name], value)
    return state


@pytest.mark.parametrize("value", [*BAD, "twice the window"])
def test_forward_refuses_a_bad_count(swa, value):
    session, name, window = swa
    value = 2 * window if value == "twice the window" else value
    session.check_finite = False  # the count check is not the finiteness check: it runs regardless
    try:
        message = one_line_error(session.forward, np.array([[1]]), with_count(session, name, value))
    finally:
        session.check_finite = True
    assert name in message and "whole token counts" in message


def test_every_count_in_range_runs(swa):
    session, name, window = swa
    for value in (0, 1, window - 1, window, 2 * window - 1):
        logits, state = session.forward(np.array([[1, 2]]), with_count(session, name, value))
        assert np.isfinite(logits).all() and 0 <= state[name].min() and state[name].max() < 2 * window


@pytest.mark.parametrize("value", BAD[:3])
def test_snapshots_with_a_bad_count_are_neither_saved_nor_loaded(swa, tmp_path, value):
    session, name, _ = swa
    path = tmp_path / "s.npz"
    one_line_error(save_state, path, with_count(session, name, value), session.manifest)
    assert not path.exists()
    save_state(path, session.new_state(1), session.manifest)
    with np.load(path) as z:
        arrays = dict(z)
    arrays[name] = np.full_like(arrays[name], value)
    np.savez(path, **arrays)  # a stranger's file: the right layout stamp, a hostile count
    assert "seen" in one_line_error(load_state, path, session.manifest)


def test_a_batch_row_with_a_bad_count_is_refused(swa):
    session, name, _ = swa
    batch = BatchDecoder(session, max_batch=2)
    one_line_error(batch.add, with_count(session, name, -3.0))
    assert len(batch) == 0
