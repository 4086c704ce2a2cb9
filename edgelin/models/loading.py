"""Resolve what a user names on the command line to a model: a zoo name or a checkpoint directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgelin.errors import EdgelinError
from edgelin.models.checkpoint import load_checkpoint
from edgelin.models.lm import LM
from edgelin.models.zoo import DEFAULT_MODEL, shipped_checkpoint, zoo_config


@dataclass
class LoadedModel:
    model: LM
    name: str
    source_layout: str  # "edgelin" for native checkpoints and zoo models
    trained: bool  # False for a zoo config with seeded random weights
    tokenizer_json: Path | None = None


def load_model(spec: str | None) -> LoadedModel:
    """None -> the built-in default; a directory -> its checkpoint; otherwise a zoo name."""
    spec = spec or DEFAULT_MODEL
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise EdgelinError(f"{path} is a file; give a directory with config.json and model.safetensors")
        tokenizer = path / "tokenizer.json"
        return LoadedModel(load_checkpoint(path), path.name, "edgelin", True, tokenizer if tokenizer.exists() else None)
    if "/" in spec or spec.startswith("."):
        raise EdgelinError(f"no such model directory: {spec}")
    shipped = shipped_checkpoint(spec)
    if shipped is not None:
        return LoadedModel(load_checkpoint(shipped), spec, "edgelin", True)
    return LoadedModel(LM(zoo_config(spec)).init_weights().eval(), spec, "edgelin", False)
