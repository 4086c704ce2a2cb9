"""Checkpoints: a directory with config.json and model.safetensors (never pickle)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from edgelin.atomic import atomic_dir
from edgelin.errors import EdgelinError
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM
from edgelin.runtime.schema import short

WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def save_checkpoint(model: LM, out_dir: str | Path, *, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Path:
    """Write config.json + model.safetensors into out_dir (replaced whole) through the atomic writer."""
    out = Path(out_dir)
    with atomic_dir(out, force=True, what="checkpoint") as tmp:
        model.config.save(tmp / "config.json")
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_embeddings}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", **(extra or {})})
    return out


def load_checkpoint(path: str | Path) -> LM:
    """Load an edgelin checkpoint directory; every problem is one EdgelinError line.

    The config is checked and sized before the model is allocated; the file's tensor names and
    shapes are checked against it before any tensor is read; each tensor must be floating point
    and finite in float32.
    """
    path = Path(path)
    if not path.is_dir():
        raise EdgelinError(f"{path} is not a directory with config.json and model.safetensors")
    config = LMConfig.load(path / "config.json")
    weights = path / "model.safetensors"
    if not weights.is_file():  # absent, or a directory or FIFO that would block the read
        raise missing_weights(path) if not weights.exists() else EdgelinError(f"{weights} is not a regular file")
    with torch.device("meta"):  # names and shapes only: a file that does not fit is refused before allocating
        expected = LM(config).state_dict()
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
            missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or unexpected:
                what = f"missing {', '.join(missing[:5])}" if missing else f"unexpected {', '.join(map(short, unexpected[:5]))}"
                raise EdgelinError(f"{weights} does not match config.json: {what}")
            for name, target in expected.items():
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(target.shape):
                    raise EdgelinError(f"{weights}: {name} has shape {shape}, config.json implies {tuple(target.shape)}")
            model = LM(config)
            params = model.state_dict()  # shares the parameters' storage
            with torch.no_grad():
                for name in expected:
                    params[name].copy_(checked_weight(f.get_tensor(name), name, str(weights)))
    except (SafetensorError, OSError) as e:
        raise EdgelinError(f"corrupt safetensors file {weights}: {e}") from None
    return model.eval()


def checked_weight(tensor: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """`tensor` as float32. Integer and bool tensors are refused (as weights they would be
    garbage), and so is any value that is not finite in float32 (inf, NaN, or float64 past float32)."""
    if tensor.dtype not in WEIGHT_DTYPES:
        raise EdgelinError(f"{source}: tensor {short(name)} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                           "weights must be float16, bfloat16, float32 or float64")
    weight = tensor.float()
    if not torch.isfinite(weight).all():
        raise EdgelinError(f"{source}: tensor {short(name)} holds inf or NaN (in float32); the checkpoint is damaged")
    return weight


def missing_weights(path: Path) -> EdgelinError:
    """The error for a checkpoint directory without safetensors weights; pickle weights are named, never read."""
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickled:
        return EdgelinError(f"missing weights: {path} has only pickle weights ({', '.join(map(short, pickled[:3]))}), "
                            "which edgelin never loads; convert them to safetensors first "
                            "(transformers: save_pretrained(safe_serialization=True))")
    return EdgelinError(f"missing weights: no model.safetensors in {path}")
