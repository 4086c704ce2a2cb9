"""Hostile HTTP requests to `edgelin serve`: a 4xx in OpenAI's error shape, never a 5xx, and the server keeps serving."""
import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgelin.serve import EngineConfig
from serve_helpers import MODEL, request, running_server, wait_idle

MAX_BODY = 4096
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server(pkg):
    config = EngineConfig(max_batch=2, max_queue=8, max_prompt_tokens=64, max_tokens=32)
    with running_server(pkg, config, max_body_bytes=MAX_BODY) as running:
        yield running


def ok_completion(**over):
    return {"model": MODEL, "prompt": "hello", "max_tokens": 4, "temperature": 0} | over


def ok_chat(**over):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | over


def assert_refused(status, body, *codes):
    assert status in codes, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert error["type"] and "param" in error and "code" in error


def assert_still_serving(url, engine):
    status, body = request(url, "POST", "/v1/completions", ok_completion())
    assert status == 200 and body["usage"]["completion_tokens"] == 4, body
    stats = wait_idle(engine)
    assert stats["failed"] == 0, stats


BAD_BODIES = [
    b"{bad", b"", b"[1, 2]", b'"text"', b"null", b'{"model": "tiny", "prompt": "a", "temperature": NaN}',
    b"\xff\xfe{}", b"[" * 3000, b'{"model": "tiny", "prompt": "a"} trailing',
]

BAD_COMPLETIONS = [
    {"model": None}, {"model": 5}, {"model": ""}, {"prompt": None}, {"prompt": 5}, {"prompt": [1.5]},
    {"prompt": ["a", "b"]}, {"prompt": [[1], [2]]}, {"prompt": []}, {"prompt": ""}, {"prompt": [300]}, {"prompt": [-1]},
    {"prompt": [True]}, {"prompt": {"text": "a"}}, {"max_tokens": "10"}, {"max_tokens": 0}, {"max_tokens": -5},
    {"max_tokens": 1.5}, {"max_tokens": True}, {"max_tokens": 10 ** 12}, {"temperature": "hot"},
    {"temperature": 3}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"top_k": 2.5},
    {"stream": "yes"}, {"stream": 1}, {"stream_options": {"include_usage": True}},
    {"stream": True, "stream_options": {"x": 1}}, {"stop": 5}, {"stop": [1]}, {"stop": ["a", "b", "c", "d", "e"]},
    {"stop": [""]}, {"stop": "x" * 300}, {"seed": 1.5}, {"seed": "1"}, {"seed": 2 ** 70}, {"n": 2},
    {"logprobs": 3}, {"echo": True}, {"best_of": 3}, {"suffix": "x"}, {"logit_bias": {"1": 5}},
    {"presence_penalty": 1}, {"frequency_penalty": -1}, {"foo": 1}, {"user": 5}, {"prompt": "x" * 100},
]

BAD_CHATS = [
    {"messages": None}, {"messages": []}, {"messages": "hi"}, {"messages": [5]}, {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user"}]}, {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]},
    {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, {"tools": [{"type": "function"}]},
    {"response_format": {"type": "json_object"}}, {"max_completion_tokens": 10 ** 9}, {"logprobs": True},
    {"messages": [{"role": "user", "content": "x" * 100}]}, {"prompt": "a"},
]


@pytest.mark.parametrize("body", BAD_BODIES, ids=lambda b: repr(b[:20]))
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_bodies(server, path, body):
    url, _ = server
    assert_refused(*request(url, "POST", path, body), 400)


@pytest.mark.parametrize("over", BAD_COMPLETIONS, ids=lambda d: json.dumps(d)[:40])
def test_bad_completion_fields(server, over):
    url, _ = server
    status, body = request(url, "POST", "/v1/completions", ok_completion(**over))
    assert_refused(status, body, 400)
    if over.get("prompt") == "x" * 100:
        assert body["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("over", BAD_CHATS, ids=lambda d: json.dumps(d)[:40])
def test_bad_chat_fields(server, over):
    url, _ = server
    assert_refused(*request(url, "POST", "/v1/chat/completions", ok_chat(**over)), 400)


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/v1/completions", ok_completion(model="gpt-4"), 404), ("POST", "/v1/chat/completions", ok_chat(model="x"), 404),
    ("GET", "/v1/models/gpt-4", None, 404), ("GET", "/v1/nothing", None, 404), ("DELETE", "/v1/completions", None, 405),
    ("POST", "/v1/models", {}, 405), ("GET", "/v1/chat/completions", None, 405),
])
def test_unknown_models_routes_and_methods(server, method, path, body, status):
    url, _ = server
    assert_refused(*request(url, method, path, body), status)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body(server, chunked):
    url, engine = server
    body = ok_completion(prompt="x" * MAX_BODY)
    assert_refused(*request(url, "POST", "/v1/completions", body, chunked=chunked), 413)
    assert_still_serving(url, engine)


def _raw(url, payload: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(payload)
    return sock


def _post(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + \
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data


def _cancelled_once_more(engine, before):
    deadline = time.monotonic() + 30
    while engine.stats()["cancelled"] < before + 1:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.02)


@pytest.fixture
def long_server(pkg):
    """A server that lets a request run for 4,000 tokens: long enough to hang up in the middle."""
    with running_server(pkg, EngineConfig(max_tokens=4000)) as running:
        yield running


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_the_request(long_server, stream):
    url, engine = long_server
    sock = _raw(url, _post(ok_completion(max_tokens=4000, stream=stream)))
    if stream:
        seen = b""
        while seen.count(b"data:") < 2:
            seen += sock.recv(4096)
    else:
        time.sleep(0.1)
    sock.close()
    _cancelled_once_more(engine, 0)
    assert engine.stats()["completed"] == 0
    assert_still_serving(url, engine)


def test_disconnect_while_sending_the_body(server):
    url, engine = server
    sock = _raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":")
    sock.close()
    assert_still_serving(url, engine)


def test_streamed_refusals_are_still_4xx(server):
    url, _ = server
    assert_refused(*request(url, "POST", "/v1/completions", ok_completion(stream=True, max_tokens=10 ** 6)), 400)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                    | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = st.sampled_from(["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stream", "stop", "seed",
                          "n", "messages", "stream_options", "logprobs", "user"])


@FUZZ
@given(fields=st.dictionaries(FIELDS, JSON, max_size=6), chat=st.booleans())
def test_fuzzed_fields_never_break_the_server(server, fields, chat):
    url, _ = server
    body = (ok_chat() if chat else ok_completion()) | fields
    status, reply = request(url, "POST", "/v1/chat/completions" if chat else "/v1/completions", body)
    if status != 200:
        assert_refused(status, reply, 400, 404)


def test_server_still_clean_after_the_battery(server):
    url, engine = server
    assert_still_serving(url, engine)
