"""The HTTP face of the engine: OpenAI-compatible routes on Starlette, served by uvicorn.

    GET  /health                 engine occupancy and cache figures
    GET  /v1/models              the one model served
    GET  /v1/models/{model}
    POST /v1/completions         prompt text or token ids; "stream": true for server-sent events
    POST /v1/chat/completions    messages (the fallback template of chat.py); streaming too

Every refusal is OpenAI's error shape with a 4xx status (5xx for the server's own failures).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgelin.errors import EdgelinError
from edgelin.runtime.chat_template import ChatTemplate
from edgelin.runtime.tokenizer import encode_prompt
from edgelin.serve.chat import encode_chat
from edgelin.serve.engine import Engine, Event, Failed, Finished, GenerationRequest, TextDelta
from edgelin.serve.schema import Options, RequestError, parse_chat, parse_completion, parse_json

DEFAULT_MAX_BODY = 1 << 20
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DISCONNECT_POLL_S = 0.25


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers={"Retry-After": "1"} if e.status == 503 else None)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past `limit` bytes whether or not Content-Length says so."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RequestError(413 if length.isdigit() else 400, f"the request body is larger than {limit} bytes"
                           if length.isdigit() else "Content-Length is not a number", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def usage(done: Finished) -> dict[str, Any]:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}


class _Format:
    """The JSON objects of one endpoint: whole responses and stream chunks."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _wrap(self, choice: dict[str, Any], chunk: bool) -> dict[str, Any]:
        kind = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}

    def whole(self, text: str, done: Finished) -> dict[str, Any]:
        body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {**self._wrap({"index": 0, **body, "logprobs": None, "finish_reason": done.reason}, False),
                "usage": usage(done)}

    def chunk(self, text: str | None, reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return self._wrap({"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}, True)
        return self._wrap({"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}, True)

    def first(self) -> dict[str, Any] | None:
        """The opening chunk of a chat stream (the role); completions have none."""
        if not self.chat:
            return None
        return self._wrap({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                           "finish_reason": None}, True)

    def usage_chunk(self, done: Finished) -> dict[str, Any]:
        return {**self._wrap({}, True), "choices": [], "usage": usage(done)}


def _sse(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


class Server:
    """The routes over one engine; `app` is the Starlette application.

    Args:
        engine: the engine serving the package.
        model: the model id clients must name.
        max_body_bytes: largest request body accepted.
        on_shutdown: called when the application stops (closes the engine in `serve`).
    """

    def __init__(self, engine: Engine, model: str, *, max_body_bytes: int = DEFAULT_MAX_BODY,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        self.engine, self.model, self.max_body = engine, model, max_body_bytes
        manifest = engine.session.manifest
        self.template = ChatTemplate.from_manifest(manifest) if manifest.tokenizer.get("chat_template") else None
        self.created = int(time.time())

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            if on_shutdown is not None:
                on_shutdown()

        self.app = Starlette(routes=[
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model_info, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ], exception_handlers={HTTPException: self.http_error, RequestError: self.request_error,
                               Exception: self.server_error}, lifespan=lifespan)

    async def http_error(self, request: Request, e: HTTPException) -> JSONResponse:
        messages = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(RequestError(e.status_code, messages.get(e.status_code, str(e.detail)),
                                           code="not_found" if e.status_code == 404 else None))

    async def request_error(self, request: Request, e: RequestError) -> JSONResponse:
        return error_response(e)

    async def server_error(self, request: Request, e: Exception) -> JSONResponse:
        return error_response(RequestError(500, "internal server error", kind="server_error"))

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": self.created, "owned_by": "edgelin"}

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": self.model, **self.engine.stats()})

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: Request) -> JSONResponse:
        self._check_model(request.path_params["model"])
        return JSONResponse(self._model_card())

    def _check_model(self, name: str) -> None:
        if name != self.model:
            raise RequestError(404, f"The model `{name[:100]}` does not exist; this server serves `{self.model}`",
                               param="model", code="model_not_found")

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            return parse_json(await read_body(request, self.max_body))
        except ClientDisconnect:
            raise RequestError(400, "the client disconnected before sending the whole body") from None

    async def completions(self, request: Request) -> Response:
        req = parse_completion(await self._body(request), max_tokens=self.engine.config.max_tokens)
        self._check_model(req.options.model)
        tok = self.engine.tokenizer
        ids = req.prompt if isinstance(req.prompt, list) else encode_prompt(tok, req.prompt)
        return await self._run(request, req.options, ids, (), _Format(False, self.model),
                               req.options.max_tokens or COMPLETION_DEFAULT_TOKENS)

    async def chat_completions(self, request: Request) -> Response:
        req = parse_chat(await self._body(request), max_tokens=self.engine.config.max_tokens)
        self._check_model(req.options.model)
        try:  # a template renders in the sandbox, off the event loop
            ids, ends = await asyncio.to_thread(encode_chat, self.engine.tokenizer, req.messages, self.template)
        except EdgelinError as e:
            raise RequestError(400, str(e)) from None
        return await self._run(request, req.options, ids, tuple(ends), _Format(True, self.model),
                               req.options.max_tokens or self.engine.config.max_tokens)

    async def _run(self, request: Request, o: Options, ids: list[int], marks: tuple[int, ...], fmt: _Format,
                   max_tokens: int) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        gen = GenerationRequest(ids, max_tokens, o.sampling, o.seed, o.stop, marks)
        handle = self.engine.submit(gen, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        if o.stream:
            return StreamingResponse(self._stream(events, handle, fmt, o.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            text, checked = [], time.monotonic()
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody reads it; the request is cancelled below
                    checked = time.monotonic()
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, Failed):
                    return error_response(event.error)
                elif isinstance(event, Finished):
                    return JSONResponse(fmt.whole("".join(text), event))
        finally:
            handle.cancel()

    async def _stream(self, events: asyncio.Queue, handle, fmt: _Format, include_usage: bool) -> AsyncIterator[str]:
        try:
            if (first := fmt.first()) is not None:
                yield _sse(first | ({"usage": None} if include_usage else {}))
            while True:
                event = await events.get()
                if isinstance(event, TextDelta):
                    yield _sse(fmt.chunk(event.text) | ({"usage": None} if include_usage else {}))
                elif isinstance(event, Failed):
                    yield _sse(event.error.body())
                    break
                else:
                    yield _sse(fmt.chunk(None, event.reason) | ({"usage": None} if include_usage else {}))
                    if include_usage:
                        yield _sse(fmt.usage_chunk(event))
                    break
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away mid-stream (the task is cancelled)
            handle.cancel()
