"""Checkpoints: a directory with config.json and model.safetensors (never pickle)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgelin.errors import EdgelinError
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM


def save_checkpoint(model: LM, out_dir: str | Path, *, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Path:
    """Write config.json + model.safetensors into out_dir via a temporary directory and a rename."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.config.save(tmp / "config.json")
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_embeddings}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", **(extra or {})})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(path: str | Path) -> LM:
    """Load an edgelin checkpoint directory; every problem is one EdgelinError line."""
    path = Path(path)
    if not path.is_dir():
        raise EdgelinError(f"{path} is not a directory with config.json and model.safetensors")
    config = LMConfig.load(path / "config.json")
    weights = path / "model.safetensors"
    if not weights.exists():
        raise EdgelinError(f"missing weights: {weights} not found")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise EdgelinError(f"corrupt safetensors file {weights}: {e}") from None
    model = LM(config)
    expected = model.state_dict()
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing {', '.join(missing[:5])}" if missing else f"unexpected {', '.join(unexpected[:5])}"
        raise EdgelinError(f"{weights} does not match config.json: {what}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise EdgelinError(f"{weights}: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    return model.eval()
