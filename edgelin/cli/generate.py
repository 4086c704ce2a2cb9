"""`edgelin generate`: stream text from a package (torch-free)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from edgelin.atomic import check_destination
from edgelin.cli import app, user_errors
from edgelin.errors import EdgelinError


@app.command()
@user_errors
def generate(
    package: Path = typer.Argument(..., help="Package directory."),
    prompt: Optional[str] = typer.Option(None, help="Prompt text."),
    ids: Optional[str] = typer.Option(None, help="Prompt as comma-separated token ids (instead of --prompt)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Tokens to generate (default: the package's "
                                                 "generation defaults, else 64)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the package's generation "
                                                "defaults, else 0.8)."),
    top_k: Optional[int] = typer.Option(None, help="Keep the k most likely tokens (0 = off; default: the package's, else 0)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold (1 = off; default: the package's, else 1)."),
    backend: str = typer.Option("ort", help="Back end to run on."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads."),
    device: Optional[str] = typer.Option(None, help="Device for back ends that have several (OpenVINO: CPU, NPU, GPU)."),
    state_in: Optional[Path] = typer.Option(None, help="Start from a saved state snapshot."),
    state_out: Optional[Path] = typer.Option(None, help="Save the state after generation."),
    trust_native_code: bool = typer.Option(False, "--trust-native-code", help="Allow a back end that runs native "
                                           "code from the package (tvm); only for packages you trust."),
) -> None:
    """Generate text from a package, streaming it as it is produced (special tokens left out); its
    generation defaults (from the source's generation_config.json) apply where no option is given."""
    from edgelin.runtime import SamplingConfig, Session, encode_prompt, load_state, load_tokenizer, package_sampling, save_state
    from edgelin.runtime import generate as generate_ids
    from edgelin.runtime.generate import end_ids
    from edgelin.runtime.sampling import package_max_new_tokens

    if (prompt is None) == (ids is None):
        raise EdgelinError("give exactly one of --prompt TEXT or --ids 1,2,3")
    if state_out:
        check_destination(state_out, what="state file")
    session = Session(package, backend=backend, threads=threads, device=device, trust_native_code=trust_native_code)
    tokenizer = load_tokenizer(package, session.manifest)
    state = load_state(state_in, session.manifest) if state_in else None
    if prompt is not None:
        prompt_ids = encode_prompt(tokenizer, prompt) if state is None else tokenizer.encode(prompt)
    else:
        try:
            prompt_ids = [int(t) for t in ids.split(",") if t.strip()]
        except ValueError:
            raise EdgelinError(f"--ids must be comma-separated integers, got {ids!r}") from None
    sampling = package_sampling(session.manifest, temperature=temperature, top_k=top_k, top_p=top_p,
                                fallback=SamplingConfig(temperature=0.8))
    if max_new_tokens is None:
        max_new_tokens = package_max_new_tokens(session.manifest, len(prompt_ids), 64)
    tokens = generate_ids(session, prompt_ids, max_new_tokens, sampling, seed=seed, state=state,
                          stop_ids=end_ids(tokenizer))
    decoder = tokenizer.stream_decoder()
    for token in tokens:
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    if state_out:
        # Feed the last sampled token so the snapshot covers everything printed.
        _, final = session.forward(np.array([tokens.pending], np.int64), tokens.state)
        save_state(state_out, final, session.manifest)
