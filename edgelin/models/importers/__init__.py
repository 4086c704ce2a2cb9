"""Import checkpoints from other layouts (Hugging Face transformers, flash-linear-attention) as edgelin LMs.

Each importer maps config.json to an LMConfig exactly (or refuses what it cannot reproduce) and
the safetensors weight names to edgelin's. Neither transformers nor fla is imported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgelin.errors import EdgelinError
from edgelin.models.config import check_fits, is_int
from edgelin.models.importers import (
    fla_deltanet, fla_gated_deltanet, fla_gla, fla_retnet, hf_gpt2, hf_lfm2, hf_llama, hf_mamba, hf_mamba2, hf_qwen2, hf_qwen3,
    hf_xlstm,
)
from edgelin.models.importers.common import Importer, Weights, build, empty_model, read_config, read_safetensors
from edgelin.models.lm import LM
from edgelin.runtime.schema import short

IMPORTERS: dict[str, Importer] = {
    t: m.IMPORTER
    for m in (hf_mamba2, hf_mamba, hf_lfm2, hf_xlstm, hf_llama, hf_qwen2, hf_qwen3, hf_gpt2, fla_gla, fla_gated_deltanet,
              fla_deltanet, fla_retnet)
    for t in m.IMPORTER.model_types
}
DEFAULT_MAX_CONTEXT = 2048  # KV cache length for full-attention layers (LFM2, Llama, Qwen2, Qwen3, GPT-2)


def is_foreign(cfg: dict[str, Any]) -> bool:
    """A config.json that is not edgelin's own (edgelin writes "architecture": "edgelin-lm" and no model_type)."""
    return cfg.get("architecture") != "edgelin-lm" and ("model_type" in cfg or "architectures" in cfg)


def detect(cfg: dict[str, Any], path: Path) -> Importer:
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in IMPORTERS:
        raise EdgelinError(
            f"{path / 'config.json'}: unknown model_type {short(model_type)}; importable: {', '.join(sorted(IMPORTERS))}"
        )
    return IMPORTERS[model_type]


def import_checkpoint(path: str | Path, *, max_context: int = DEFAULT_MAX_CONTEXT) -> tuple[LM, str]:
    """Read a transformers / fla checkpoint directory into an edgelin LM.

    The config is checked and sized (`check_fits`) before any weight is read; every weight taken
    must be floating point and finite in float32.

    Args:
        path: directory with config.json and model.safetensors (or shards with model.safetensors.index.json).
        max_context: KV cache length for layers with full attention (LFM2, Llama, Qwen2, Qwen3; GPT-2 at
            most its n_positions); see docs/FORMAT.md.
    Returns:
        (model in eval mode, source layout name such as "hf-mamba2" or "fla-gla").
    """
    path = Path(path)
    cfg = read_config(path)
    importer = detect(cfg, path)
    if not is_int(max_context) or max_context < 1:
        raise EdgelinError(f"max_context must be an integer >= 1, got {short(max_context)}")
    source = f"{path} ({importer.layout})"
    try:
        config = importer.to_config(cfg, max_context)
    except (TypeError, ValueError, ArithmeticError) as e:  # arithmetic on values checked one by one (a float past int)
        raise EdgelinError(f"{path / 'config.json'} ({importer.layout}): {e}") from None
    check_fits(config)
    model, shapes = empty_model(config)
    weights = Weights(read_safetensors(path), str(path))
    try:
        state = importer.to_state(cfg, config, weights)
    except RuntimeError as e:  # reshaping or joining source tensors whose shapes do not fit the config
        weights.check()
        raise EdgelinError(f"{source}: weight shapes do not match config.json ({str(e).splitlines()[0][:200]})") from None
    weights.check()
    return build(model, shapes, state, source), importer.layout
