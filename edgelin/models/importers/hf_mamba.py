"""Hugging Face transformers Mamba (v1; MambaForCausalLM / MambaModel) -> edgelin mamba blocks."""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Importer, Weights, embeddings_and_head, refuse, require

WHERE = "hf mamba"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    d = require(cfg, "hidden_size", WHERE)
    expand = cfg.get("expand", 2)
    inner = cfg.get("intermediate_size", expand * d)
    refuse(inner != expand * d, f"{WHERE}: intermediate_size {inner} != expand * hidden_size {expand * d}")
    refuse(cfg.get("hidden_act", "silu") != "silu", f"{WHERE}: hidden_act {cfg.get('hidden_act')!r} is not supported (silu only)")
    rank = cfg.get("time_step_rank", "auto")
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=d, n_layers=require(cfg, "num_hidden_layers", WHERE),
        n_heads=1, pattern=["mamba"], d_ff=-1, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=cfg.get("tie_word_embeddings", True),
        mixers={"mamba": {
            "expand": expand, "state_size": cfg.get("state_size", 16), "conv_kernel": cfg.get("conv_kernel", 4),
            "conv_bias": cfg.get("use_conv_bias", True), "proj_bias": cfg.get("use_bias", False),
            "dt_rank": math.ceil(d / 16) if rank == "auto" else int(rank),
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    w.strip("backbone.")
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        state[f"{dst}.mixer_norm.weight"] = w.take(f"{src}.norm.weight")
        m = f"{src}.mixer"
        names = {"in_proj.weight": "in_proj.weight", "conv.weight": "conv1d.weight", "x_proj.weight": "x_proj.weight",
                 "dt_proj.weight": "dt_proj.weight", "dt_proj.bias": "dt_proj.bias", "A_log": "A_log", "D": "D",
                 "out_proj.weight": "out_proj.weight"}
        if cfg.get("use_conv_bias", True):
            names["conv.bias"] = "conv1d.bias"
        if cfg.get("use_bias", False):
            names.update({"in_proj.bias": "in_proj.bias", "out_proj.bias": "out_proj.bias"})
        for ours, theirs in names.items():
            state[f"{dst}.mixer.{ours}"] = w.take(f"{m}.{theirs}")
    embeddings_and_head(state, w, cfg, config, ("embeddings.weight", "embedding.weight"), "norm_f.weight")
    return state


IMPORTER = Importer("hf-mamba", ("mamba",), to_config, to_state)
