"""Resolve what a user names on the command line to a model: a zoo name or a checkpoint directory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from edgelin.errors import EdgelinError
from edgelin.models.checkpoint import load_checkpoint
from edgelin.models.hf_conventions import read_conventions
from edgelin.models.hub_cache import is_hub_id, resolve_hub_id
from edgelin.models.importers import DEFAULT_MAX_CONTEXT, import_checkpoint, is_foreign
from edgelin.models.importers.common import read_config
from edgelin.models.lm import LM
from edgelin.models.zoo import DEFAULT_MODEL, shipped_checkpoint, zoo_config
from edgelin.runtime.schema import short


@dataclass
class LoadedModel:
    model: LM
    name: str
    source_layout: str  # "edgelin" for native checkpoints and zoo models, else e.g. "hf-mamba2", "fla-gla"
    trained: bool  # False for a zoo config with seeded random weights
    tokenizer_json: Path | None = None
    # the manifest's `tokenizer` fields (bos_id, eos_ids, chat_template, ...) and `generation` defaults,
    # from the checkpoint's config.json, generation_config.json, tokenizer_config.json (models/hf_conventions.py)
    special_tokens: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)


def load_model(spec: str | None, *, max_context: int = DEFAULT_MAX_CONTEXT, revision: str | None = None) -> LoadedModel:
    """None -> the built-in default; a directory -> its checkpoint (edgelin's own, or a transformers /
    fla layout through edgelin.models.importers); a hub id ORG/NAME that is no directory -> its
    snapshot in the local Hugging Face cache at `revision`; otherwise a zoo name. `max_context`
    caps the KV cache of imported full-attention layers."""
    spec = spec or DEFAULT_MODEL
    if not isinstance(spec, str):
        raise EdgelinError(f"a model is a zoo name, a checkpoint directory or a hub id, got {short(spec)}")
    if revision is not None and (not isinstance(revision, str) or not is_hub_id(spec) or Path(spec).exists()):
        raise EdgelinError("--revision goes with a Hugging Face hub id (ORG/NAME) from the local cache")
    path = Path(spec)
    try:
        exists = path.exists()
    except OSError as e:  # a name too long for the file system
        raise EdgelinError(f"cannot use {short(spec)} as a model: {e.strerror}") from None
    name = path.name
    if not exists and is_hub_id(spec):
        path, name, exists = resolve_hub_id(spec, revision), spec.split("/")[1], True
    if exists:
        if not path.is_dir():
            raise EdgelinError(f"{path} is a file; give a directory with config.json and model.safetensors")
        tokenizer = path / "tokenizer.json"
        tokenizer_json = tokenizer if tokenizer.exists() else None
        config = read_config(path)
        if is_foreign(config):
            model, layout = import_checkpoint(path, max_context=max_context)
        else:
            model, layout, config = load_checkpoint(path), "edgelin", {}
        found = read_conventions(path, config, model.config.vocab_size, tokenizer_json)
        return LoadedModel(model, name, layout, True, tokenizer_json, found.tokenizer, found.generation)
    if "/" in spec or spec.startswith("."):
        raise EdgelinError(f"no such model directory: {spec}")
    shipped = shipped_checkpoint(spec)
    if shipped is not None:
        return LoadedModel(load_checkpoint(shipped), spec, "edgelin", True)
    return LoadedModel(LM(zoo_config(spec)).init_weights().eval(), spec, "edgelin", False)
