"""A real edgelin server (uvicorn on the loopback address, in a thread) and raw HTTP helpers for tests."""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from typing import Any, Iterator

from edgelin.runtime import Session, load_tokenizer
from edgelin.serve import Engine, EngineConfig
from edgelin.serve.app import Server

MODEL = "tiny"


@contextlib.contextmanager
def running_server(package, config: EngineConfig = EngineConfig(), **server_options) -> Iterator[tuple[str, Engine]]:
    """(base URL, engine) of a server on 127.0.0.1:<free port>, stopped (and its engine closed) on exit."""
    import uvicorn

    session = Session(package, threads=1)
    engine = Engine(session, load_tokenizer(package, session.manifest), config)
    app = Server(engine, MODEL, on_shutdown=engine.close, **server_options).app
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", limit_concurrency=64))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", engine
    finally:
        server.should_exit = True
        thread.join(30)


def request(url: str, method: str, path: str, body: bytes | str | dict | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, Any]:
    """(status, JSON body or raw text) of one HTTP request, sent as given (no client-side checks)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
    h = {"Content-Type": "application/json", **(headers or {})}
    if chunked:
        conn.request(method, path, body=iter([data[i:i + 4096] for i in range(0, len(data), 4096)]), headers=h,
                     encode_chunked=True)
    else:
        conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read().decode()
    conn.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw


def wait_idle(engine: Engine, timeout: float = 30) -> dict:
    """The engine's stats once nothing is queued, prefilling or decoding."""
    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if not (stats["queued"] or stats["prefilling"] or stats["decoding"] or stats["batch_rows"]):
            return stats
        assert time.monotonic() < deadline, f"the engine is still busy: {stats}"
        time.sleep(0.02)
