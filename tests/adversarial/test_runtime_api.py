"""Hostile Python API arguments, long prompts and threads: an EdgelinError or a correct result, never another exception."""
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgelin.errors import EdgelinError
from edgelin.runtime import (
    ByteTokenizer, SamplingConfig, Session, generate, generate_text, load_tokenizer, probabilities, sample,
)

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def error_of(fn, *args, **kw):
    with pytest.raises(EdgelinError) as e:
        fn(*args, **kw)
    assert str(e.value) and "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("kw", [
    {"backend": None}, {"backend": 5}, {"backend": ""}, {"backend": "nope"}, {"backend": "../ort"},
    {"backend": "openvino-"}, {"threads": "x"}, {"threads": -5}, {"threads": 0}, {"threads": 2.5},
    {"threads": True}, {"threads": 10 ** 6}, {"device": "NPU"}, {"device": 5}, {"device": ""},
    {"graphs": {"decode": "x"}}, {"graphs": {"nope": b""}}, {"graphs": {}}, {"graphs": "decode"},
    {"graphs": {"decode": b"not onnx"}}, {"states": "x"}, {"states": [{"input": 1}]}, {"states": [{}]},
    {"trust_native_code": "yes"}, {"trust_native_code": 1}, {"check_finite": None},
])
def test_bad_session_arguments(pkg, kw):
    error_of(Session, pkg, **kw)


@pytest.mark.parametrize("path", [None, 5, b"/tmp", ["p"], "/no/such/package"])
def test_bad_package_path(path):
    error_of(Session, path)


def test_device_is_for_backends_that_have_one(pkg):
    assert "takes no device" in error_of(Session, pkg, device="NPU")


IDS = np.array([[1, 2, 3]])


@pytest.mark.parametrize("ids, state", [
    (IDS, None), (IDS, "x"), (IDS, {}), (IDS, 5), (IDS, [1, 2]),
    (np.array([[1.5]]), "new"), (np.zeros((1, 1, 1), np.int64), "new"), (np.zeros((1, 0), np.int64), "new"),
    (np.zeros((0, 1), np.int64), "new"), (np.array([[256]]), "new"), (np.array([[-1]]), "new"),
    (np.array([["a"]]), "new"), ([[1, 2], [3]], "new"), ("abc", "new"), (None, "new"), (np.array([[True]]), "new"),
    (np.array([[2 ** 40]]), "new"), (IDS, "batch2"), (IDS, "lists"), (IDS, "float64"), (IDS, "shape"),
    (IDS, "extra"), (IDS, "nan"),
])
def test_bad_forward_arguments(session, ids, state):
    good = session.new_state()
    states = {"new": good, "batch2": session.new_state(2), "lists": {k: v.tolist() for k, v in good.items()},
              "float64": {k: v.astype(np.float64) for k, v in good.items()},
              "shape": {k: v[..., :1] for k, v in good.items()}, "extra": {**good, "x": np.zeros(1)},
              "nan": {k: np.full_like(v, np.nan) for k, v in good.items()}}
    error_of(session.forward, ids, states.get(state, state) if isinstance(state, str) else state)


@pytest.mark.parametrize("logits", ["first", None, 1, "ALL", ["last"]])
def test_bad_logits_choice(session, logits):
    error_of(session.forward, IDS, session.new_state(), logits=logits)


@pytest.mark.parametrize("batch", [0, -1, 2.5, "2", True, None, 10 ** 15])
def test_bad_new_state(session, batch):
    error_of(session.new_state, batch)


@pytest.mark.parametrize("name, T", [("nope", 1), (None, 1), ("prefill", 3), ("decode", 2)])
def test_bad_run_graph(session, name, T):
    error_of(session.run_graph, name, np.zeros((1, T), np.int64), session.new_state())


def test_run_graph_still_runs(session):
    out, state = session.run_graph("prefill", np.arange(8)[None], session.new_state())
    want, _ = session.forward(np.arange(8)[None], session.new_state())
    assert np.allclose(out["logits"], want) and set(state) == set(session.new_state())


@pytest.mark.parametrize("kw", [
    {"max_new_tokens": "5"}, {"max_new_tokens": 2.5}, {"max_new_tokens": -1}, {"max_new_tokens": True},
    {"seed": -1}, {"seed": "1"}, {"seed": 1.5}, {"seed": True},
    {"sampling": "greedy"}, {"prompt_ids": []}, {"prompt_ids": "abc"}, {"prompt_ids": [[1]]},
    {"prompt_ids": [1.5]}, {"prompt_ids": [300]}, {"prompt_ids": [-1]}, {"prompt_ids": [[1], [2, 3]]},
    {"prompt_ids": None}, {"prompt_ids": [True]}, {"prompt_ids": [2 ** 70]}, {"state": "x"}, {"state": 5},
    {"stop_ids": 5}, {"stop_ids": "ab"}, {"stop_ids": [1.5]}, {"stop_ids": None}, {"session": "x"},
])
def test_bad_generate_arguments(session, kw):
    args = {"session": session, "prompt_ids": [1, 2], "max_new_tokens": 3, **kw}
    error_of(lambda: list(generate(**args)))


@pytest.mark.parametrize("n", [0, 1, 3, np.int64(4)])
def test_max_new_tokens_exact(session, n):
    assert len(list(generate(session, [1, 2], n))) == n


@pytest.mark.parametrize("kw", [
    {"temperature": "hot"}, {"temperature": None}, {"temperature": -1}, {"temperature": float("nan")},
    {"temperature": float("inf")}, {"temperature": True}, {"temperature": [1.0]}, {"top_k": 1.5}, {"top_k": 2.0},
    {"top_k": "3"}, {"top_k": -1}, {"top_k": True}, {"top_k": None}, {"top_p": 0}, {"top_p": 1.5},
    {"top_p": "0.9"}, {"top_p": float("nan")}, {"top_p": None},
])
def test_bad_sampling_config(kw):
    error_of(SamplingConfig, **kw)


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 1e300])
def test_extreme_temperatures_sample_valid_tokens(temperature):
    logits = np.array([[0.0, 5.0, 1.0, -1e30]])
    p = probabilities(logits, SamplingConfig(temperature=temperature))
    assert np.isfinite(p).all() and np.isclose(p.sum(), 1.0)
    assert 0 <= sample(logits, SamplingConfig(temperature=temperature), np.random.default_rng(0))[0] < 4


@pytest.mark.parametrize("logits", [np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]]), np.array([1.0, 2.0]),
                                    np.zeros((1, 0))])
@pytest.mark.parametrize("config", [SamplingConfig(temperature=0.0), SamplingConfig(temperature=0.8, top_k=2)])
def test_sample_refuses_broken_logits(logits, config):
    error_of(sample, logits, config, np.random.default_rng(0))


@pytest.mark.parametrize("prompt, stop", [("\ud800", ()), ("ok \udfff", ()), (b"hi", ()), (None, ()), (5, ()),
                                          ("hi", 5), ("hi", "ab"), ("hi", [1.5])])
def test_bad_text_prompt(session, prompt, stop):
    error_of(lambda: list(generate_text(session, ByteTokenizer(), prompt, 3, stop_ids=stop)))


@pytest.mark.parametrize("ids", [[300], [-1], ["a"], [1.5], 5, "ab", None])
def test_byte_tokenizer_bad_ids(ids):
    error_of(ByteTokenizer().decode, ids)


def test_text_generation_still_works(session):
    tok = load_tokenizer(session.package_dir, session.manifest)
    assert "".join(generate_text(session, tok, "héllo", 6)) == tok.decode(list(generate(session, tok.encode("héllo"), 6)))


# -- long prompts: logits for the last position only ---------------------------------------------

def test_last_logits_equal_all_logits(session):
    ids = np.random.default_rng(0).integers(0, 256, (2, 21))
    every, s1 = session.forward(ids, session.new_state(2))
    last, s2 = session.forward(ids, session.new_state(2), logits="last")
    assert last.shape == (2, 1, 256) and np.array_equal(last, every[:, -1:])
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)


def test_long_prompt_memory_stays_flat(session):
    prompt = np.random.default_rng(1).integers(0, 256, 6000)
    tracemalloc.start()
    try:
        tokens = list(generate(session, prompt, 2))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(tokens) == 2
    assert peak < 2 << 20, peak  # all logits would be 6000 x 256 x 4 bytes = 6.1 MB


# -- threads -------------------------------------------------------------------------------------

def _shared_by_threads(s, n=4):
    prompts = [[72 + i, 105, 33 + i] for i in range(n)]
    want = [list(generate(s, p, 12)) for p in prompts]
    got, errors = [None] * n, []

    def work(i):
        try:
            for _ in range(3):
                got[i] = list(generate(s, prompts[i], 12))
                assert got[i] == want[i]
        except Exception as e:  # reported below, with the thread that saw it
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert got == want


def test_ort_session_shared_by_4_threads(pkg):
    _shared_by_threads(Session(pkg, threads=1))


@pytest.mark.parametrize("backend", ["openvino", "openvino-stateful"])
def test_openvino_session_shared_by_4_threads(ov_pkg, backend):
    _shared_by_threads(Session(ov_pkg, backend=backend, threads=1))


# -- property-based fuzzing of the API -------------------------------------------------------------

ANY = (st.none() | st.booleans() | st.integers(-10, 300) | st.floats(allow_nan=True) | st.text(max_size=4)
       | st.lists(st.integers(-2, 300), max_size=4))


@FUZZ
@given(prompt=ANY, n=ANY, seed=ANY, temperature=ANY, top_k=ANY, stop=ANY)
def test_fuzz_generate(session, prompt, n, seed, temperature, top_k, stop):
    try:
        config = SamplingConfig(temperature=temperature, top_k=top_k)
        tokens = list(generate(session, prompt, n, config, seed=seed, stop_ids=stop))
    except EdgelinError as e:
        assert "\n" not in str(e)
        return
    assert len(tokens) <= n and all(0 <= t < 256 for t in tokens)


@FUZZ
@given(ids=st.lists(st.lists(st.integers(-5, 300), max_size=10), max_size=3), logits=ANY)
def test_fuzz_forward(session, ids, logits):
    try:
        out, state = session.forward(np.array(ids) if ids and len(set(map(len, ids))) == 1 else ids,
                                     session.new_state(max(len(ids), 1)), logits=logits)
    except EdgelinError:
        return
    assert np.isfinite(out).all() and out.shape[0] == len(ids)
