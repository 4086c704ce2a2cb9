"""`edgelin serve`: an OpenAI-compatible HTTP server for a package (torch-free; needs the `serve` extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgelin.cli import app, console, user_errors


@app.command()
@user_errors
def serve(
    package: Path = typer.Argument(..., help="Package directory."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port (0: any free port)."),
    backend: str = typer.Option("ort", help="Back end to run on."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads."),
    model_name: Optional[str] = typer.Option(None, help="Model id clients name (default: the package folder's name)."),
    max_batch: int = typer.Option(8, help="Requests decoded together (the batch of the step graphs)."),
    max_queue: int = typer.Option(64, help="Requests that may wait for a slot; more get 503."),
    max_tokens: int = typer.Option(4096, help="Most tokens one request may generate."),
    max_prompt_tokens: int = typer.Option(8192, help="Longest prompt accepted."),
    timeout: float = typer.Option(300.0, help="Seconds a request may take, queue included."),
    cache_mb: int = typer.Option(256, help="Prompt-state cache in MiB (0: off)."),
    spill_dir: Optional[Path] = typer.Option(None, help="Spill evicted cache entries to this folder."),
    spill_mb: int = typer.Option(1024, help="Disk budget of the spilled entries in MiB."),
    checkpoint_every: int = typer.Option(512, help="Checkpoint long prompts every N tokens (0: only message ends)."),
    draft: Optional[str] = typer.Option(None, help="Speculative decoding of a request that runs alone: 'lookup' "
                                        "(prompt lookup) or a draft package sharing the tokenizer."),
    speculate: str = typer.Option("auto", help="With --draft: 'auto' (verify when it pays; a quantized package "
                                  "needs its verify graph) or 'always'."),
    max_body_kb: int = typer.Option(1024, help="Largest request body in KiB."),
) -> None:
    """Serve PACKAGE over HTTP with the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models, /health)."""
    from edgelin.runtime import read_package
    from edgelin.serve import EngineConfig, drafter_for
    from edgelin.serve import serve as run_server

    config = EngineConfig(max_batch=max_batch, max_queue=max_queue, cache_bytes=cache_mb << 20,
                          spill_dir=str(spill_dir) if spill_dir else None, spill_bytes=spill_mb << 20,
                          checkpoint_every=checkpoint_every, request_timeout=timeout,
                          max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                          drafter=drafter_for(draft, backend, threads), speculate=speculate)
    manifest = read_package(package)
    if draft and speculate == "auto" and manifest.precision.get("scheme", "fp32") != "fp32" \
            and "verify" not in manifest.graphs:
        console.print("note: --speculate auto does not verify drafts in a quantized package without a verify graph "
                      "(its prefill graph differs from its decode graph by quantization noise, so greedy output "
                      "could change); export it again (edgelin export --int8 adds one) or use --speculate always",
                      highlight=False)
    run_server(package, host=host, port=port, backend=backend, threads=threads, model_name=model_name, config=config,
               max_body_bytes=max_body_kb << 10,
               ready=lambda url: console.print(f"serving {package} on {url} (Ctrl-C to stop)", highlight=False))
