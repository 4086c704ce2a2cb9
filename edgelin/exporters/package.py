"""A model to a complete package: step graphs + manifest, written atomically (see docs/FORMAT.md)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgelin import __version__
from edgelin.exporters.onnx import export_step_graph
from edgelin.exporters.weights import save_graphs
from edgelin.models.lm import LM
from edgelin.runtime.package import write_package
from edgelin.trace import state_entries

DEFAULT_PREFILL_TOKENS = 64


def base_manifest(model: LM, *, prefill_tokens: int, source_layout: str, tokenizer: dict[str, Any]) -> dict[str, Any]:
    return {
        "producer": f"edgelin {__version__}",
        "architecture": model.config.to_dict(),
        "source_layout": source_layout,
        "vocab_size": model.config.vocab_size,
        "tokenizer": tokenizer,
        "graphs": {"decode": {"file": "decode.onnx", "tokens": 1}, "prefill": {"file": "prefill.onnx", "tokens": prefill_tokens}},
        "states": [e.to_manifest() for e in state_entries(model)],
        "precision": {"scheme": "fp32"},
        **max_context(model),
    }


def max_context(model: LM) -> dict[str, int]:
    """{"max_context": N} when full-attention layers are exported as a KV cache capped at N tokens (docs/FORMAT.md)."""
    caps = [b.mixer.max_context for b in model.blocks if getattr(b.mixer, "max_context", None)]
    return {"max_context": min(caps)} if caps else {}


def export_package(
    model: LM,
    out_dir: str | Path,
    *,
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    force: bool = False,
    source_layout: str = "edgelin",
    tokenizer_json: Path | None = None,
    special_tokens: dict[str, int] | None = None,
) -> Path:
    """Export the FP32 decode and prefill graphs of `model` into a package at `out_dir`.

    Args:
        model: the LM to export (put in eval mode).
        out_dir: package directory; must not exist unless `force`.
        prefill_tokens: the fixed chunk length of the prefill graph.
        force: replace an existing package.
        source_layout: where the weights came from (edgelin, hf-mamba2, fla-gla, ...), for `inspect`.
        tokenizer_json: a Hugging Face tokenizer.json to ship; the byte tokenizer otherwise.
        special_tokens: {"bos_id": .., "eos_id": ..} recorded with the tokenizer; `generate` starts
            prompts with bos_id and stops at eos_id.
    Returns:
        The package directory.
    """
    tokenizer = {"type": "tokenizers", "file": "tokenizer.json"} if tokenizer_json else {"type": "bytes"}
    tokenizer.update(special_tokens or {})
    with tempfile.TemporaryDirectory(prefix="edgelin-export-") as tmp:
        protos = {name: export_step_graph(model, tokens, Path(tmp) / f"{name}.onnx")
                  for name, tokens in (("decode", 1), ("prefill", prefill_tokens))}
        files, weights = save_graphs(protos, {name: f"{name}.onnx" for name in protos}, Path(tmp))
        if tokenizer_json:
            files["tokenizer.json"] = Path(tokenizer_json)
        manifest = base_manifest(model, prefill_tokens=prefill_tokens, source_layout=source_layout, tokenizer=tokenizer)
        manifest["weights"] = weights
        return write_package(out_dir, files, manifest, force=force)
