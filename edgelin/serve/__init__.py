"""`edgelin serve`: an OpenAI-compatible HTTP server over the runtime (needs the `serve` extra).

    from edgelin.serve import EngineConfig, serve
    serve("out/gla-10m", port=8000, config=EngineConfig(max_batch=4))

`create_app` gives the Starlette application (to mount or to run under another ASGI server);
`Engine` serves requests from Python without HTTP.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from edgelin.errors import EdgelinError
from edgelin.runtime.session import Session
from edgelin.runtime.speculative import ModelDrafter, PromptLookupDrafter
from edgelin.runtime.tokenizer import load_tokenizer
from edgelin.serve.engine import Engine, EngineConfig, Failed, Finished, GenerationRequest, TextDelta
from edgelin.serve.schema import RequestError

__all__ = ["Engine", "EngineConfig", "Failed", "Finished", "GenerationRequest", "RequestError", "TextDelta",
           "create_app", "drafter_for", "serve"]


def drafter_for(spec: str | None, backend: str = "ort", threads: int | None = None):
    """The drafter a `--draft` value names: None, "lookup" (prompt lookup) or a draft package directory."""
    if spec is None:
        return None
    if spec == "lookup":
        return PromptLookupDrafter()
    return ModelDrafter(Session(spec, backend=backend, threads=threads))


def create_app(package: str | os.PathLike, *, backend: str = "ort", threads: int | None = None,
               model_name: str | None = None, config: EngineConfig = EngineConfig(),
               max_body_bytes: int = 1 << 20):
    """The Starlette application serving `package`; its engine closes when the application shuts down.

    Example:
        >>> app = create_app("out/gla-10m", config=EngineConfig(max_batch=4))  # doctest: +SKIP
        >>> uvicorn.run(app, port=8000)
    """
    from edgelin.serve.app import Server

    session = Session(package, backend=backend, threads=threads)
    engine = Engine(session, load_tokenizer(package, session.manifest), config)
    name = model_name or Path(package).resolve().name
    return Server(engine, name, max_body_bytes=max_body_bytes, on_shutdown=engine.close).app


def serve(package: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, backend: str = "ort",
          threads: int | None = None, model_name: str | None = None, config: EngineConfig = EngineConfig(),
          max_body_bytes: int = 1 << 20, ready: Callable[[str], None] | None = None, log_level: str = "warning") -> None:
    """Serve `package` over HTTP until interrupted (Ctrl-C returns; SIGTERM ends the process once shut down).

    Args:
        host, port: where to listen (port 0: any free port; `ready` is told which).
        backend, threads: as for `Session`.
        model_name: the model id clients name (default: the package folder's name).
        config: the engine's limits and policies.
        max_body_bytes: largest request body accepted.
        ready: called with the base URL once the socket listens.
        log_level: uvicorn's log level.
    Raises:
        EdgelinError: the package cannot be loaded, or the address cannot be bound.
    Example:
        >>> serve("out/gla-10m", port=0, ready=print)  # doctest: +SKIP
        http://127.0.0.1:40521
    """
    import uvicorn

    app = create_app(package, backend=backend, threads=threads, model_name=model_name, config=config,
                     max_body_bytes=max_body_bytes)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:  # create_server appends "(while attempting to bind on address ...)"
        raise EdgelinError(f"cannot listen on {host}:{port}: {(e.strerror or str(e)).split(' (while')[0]}") from None
    bound = sock.getsockname()[1]
    # connections beyond what the engine can hold or queue get uvicorn's 503 at once
    limit = config.max_batch + config.max_queue + 16
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, limit_concurrency=limit, timeout_keep_alive=30,
                                           timeout_graceful_shutdown=5))
    if ready is not None:
        ready(f"http://{host if ':' not in host else f'[{host}]'}:{bound}")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server is stopped: uvicorn has shut down cleanly
        server.run(sockets=[sock])
