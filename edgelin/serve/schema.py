"""OpenAI request bodies, checked: every field's type and range, unknown and unsupported fields refused.

A bad request is one `RequestError` (status, message, the offending field), sent as OpenAI's error
shape: {"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edgelin.runtime.sampling import SamplingConfig
from edgelin.serve.chat import ROLES, Message

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_MESSAGES = 4096
SEED_RANGE = (-(1 << 63), 1 << 64)


class RequestError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        """{"error": {...}} as OpenAI sends it."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Options:
    """What both endpoints take: the model, how many tokens, how to sample, when to stop, streaming."""

    model: str
    max_tokens: int | None  # None: the endpoint's default
    sampling: SamplingConfig
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CompletionRequest:
    """POST /v1/completions."""

    options: Options
    prompt: str | list[int]


@dataclass(frozen=True)
class ChatRequest:
    """POST /v1/chat/completions."""

    options: Options
    messages: tuple[Message, ...]


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (NaN and Infinity are not JSON)."""
    def constant(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=constant)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise bad(f"the request body is not valid JSON: {str(e).splitlines()[0][:200] if str(e) else 'too deeply nested'}") from None
    if not isinstance(doc, dict):
        raise bad(f"the request body must be a JSON object, not {type(doc).__name__}")
    return doc


def _int(v: object) -> bool:
    return type(v) is int


def _number(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed",
           "user", "presence_penalty", "frequency_penalty", "logit_bias"}
# Accepted only at a value that changes nothing (the server cannot do more).
_NEUTRAL = {"n": (1,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({},),
            "logprobs": (False,), "echo": (False,), "best_of": (1,), "suffix": ("",), "top_logprobs": (0,),
            "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},), "store": (False,),
            "parallel_tool_calls": (True, False)}
COMPLETION_FIELDS = _COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                         "response_format", "store", "parallel_tool_calls", "metadata"}


def _options(body: dict[str, Any], fields: set[str], max_tokens_field: str, limit: int) -> Options:
    for name in body:
        if name not in fields:
            raise bad(f"Unrecognized request argument supplied: {name}", name)
    for name, values in _NEUTRAL.items():
        v = body.get(name)
        if name in body and v is not None and not any(type(v) is type(w) and v == w for w in values):
            raise bad(f"{name}={json.dumps(v)[:60]} is not supported by this server", name, "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("you must provide a model parameter (a string)", "model")
    max_tokens = body.get(max_tokens_field, body.get("max_tokens"))
    if max_tokens is not None:
        if not _int(max_tokens) or max_tokens < 1:
            raise bad(f"{max_tokens_field} must be an integer >= 1, not {json.dumps(max_tokens)[:40]}", max_tokens_field)
        if max_tokens > limit:
            raise bad(f"{max_tokens_field} is {max_tokens}; this server generates at most {limit} tokens per request",
                      max_tokens_field)
    temperature, top_p, top_k = body.get("temperature"), body.get("top_p"), body.get("top_k")
    if temperature is not None and (not _number(temperature) or not 0 <= temperature <= 2):
        raise bad(f"temperature must be a number in [0, 2], not {json.dumps(temperature)[:40]}", "temperature")
    if top_p is not None and (not _number(top_p) or not 0 < top_p <= 1):
        raise bad(f"top_p must be a number in (0, 1], not {json.dumps(top_p)[:40]}", "top_p")
    if top_k is not None and (not _int(top_k) or top_k < 0):
        raise bad(f"top_k must be an integer >= 0 (0: off), not {json.dumps(top_k)[:40]}", "top_k")
    sampling = SamplingConfig(temperature=1.0 if temperature is None else float(temperature),
                              top_k=top_k or 0, top_p=1.0 if top_p is None else float(top_p))
    seed = body.get("seed")
    if seed is not None and (not _int(seed) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]):
        raise bad(f"seed must be a 64-bit integer, not {json.dumps(seed)[:40]}", "seed")
    stream = body.get("stream")
    if stream is not None and type(stream) is not bool:
        raise bad(f"stream must be true or false, not {json.dumps(stream)[:40]}", "stream")
    usage = False
    if body.get("stream_options") is not None:
        so = body["stream_options"]
        if not stream:
            raise bad("stream_options is only allowed when stream is true", "stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage"} or type(so.get("include_usage", False)) is not bool:
            raise bad("stream_options must be {\"include_usage\": true|false}", "stream_options")
        usage = so.get("include_usage", False)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user must be a string", "user")
    if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
        raise bad("metadata must be an object", "metadata")
    return Options(model, max_tokens, sampling, None if seed is None else seed % (1 << 64), _stop(body.get("stop")),
                   bool(stream), usage)


def _stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop holds {len(stops)} sequences; at most {MAX_STOP}", "stop")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad(f"each stop sequence must hold 1 to {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def parse_completion(body: dict[str, Any], *, max_tokens: int) -> CompletionRequest:
    """Check a /v1/completions body; `max_tokens` is the most a request may ask for."""
    options = _options(body, COMPLETION_FIELDS, "max_tokens", max_tokens)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and all(_int(t) for t in prompt):
        if not prompt:
            raise bad("the prompt is empty", "prompt")
        return CompletionRequest(options, list(prompt))
    if isinstance(prompt, list):
        raise bad("prompt must be a string or a list of token ids (one prompt per request)", "prompt")
    if not isinstance(prompt, str):
        raise bad("you must provide a prompt (a string or a list of token ids)", "prompt")
    return CompletionRequest(options, prompt)


def _content(m: dict[str, Any], i: int) -> str:
    content = m.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         and set(p) <= {"type", "text"} for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: dict[str, Any], *, max_tokens: int) -> ChatRequest:
    """Check a /v1/chat/completions body; `max_tokens` is the most a request may ask for."""
    options = _options(body, CHAT_FIELDS, "max_completion_tokens", max_tokens)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of messages", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"messages holds {len(messages)} messages; at most {MAX_MESSAGES}", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        if set(m) - {"role", "content", "name"}:
            odd = sorted(set(m) - {"role", "content", "name"})[0]
            raise bad(f"messages[{i}].{odd} is not supported by this server", f"messages[{i}].{odd}")
        if m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        out.append(Message(m["role"], _content(m, i)))
    return ChatRequest(options, tuple(out))
