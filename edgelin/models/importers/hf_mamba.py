"""Hugging Face transformers Mamba (v1; MambaForCausalLM / MambaModel) -> edgelin mamba blocks."""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Fields, Importer, Weights, embeddings_and_head, refuse

WHERE = "hf mamba"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    d = c.integer("hidden_size")
    expand = c.integer("expand", 2)
    inner = c.integer("intermediate_size", expand * d)
    refuse(inner != expand * d, f"{WHERE}: intermediate_size {inner} != expand * hidden_size {expand * d}")
    act = c.text("hidden_act", "silu")
    refuse(act != "silu", f"{WHERE}: hidden_act {act!r} is not supported (silu only)")
    rank = math.ceil(d / 16) if cfg.get("time_step_rank", "auto") == "auto" else c.integer("time_step_rank")
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=c.integer("num_hidden_layers"),
        n_heads=1, pattern=["mamba"], d_ff=-1, norm_eps=c.number("layer_norm_epsilon", 1e-5),
        tie_embeddings=c.flag("tie_word_embeddings", True),
        mixers={"mamba": {
            "expand": expand, "state_size": c.integer("state_size", 16), "conv_kernel": c.integer("conv_kernel", 4),
            "conv_bias": c.flag("use_conv_bias", True), "proj_bias": c.flag("use_bias", False), "dt_rank": rank,
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
        if config.mixers["mamba"]["conv_bias"]:
            names["conv.bias"] = "conv1d.bias"
        if config.mixers["mamba"]["proj_bias"]:
            names.update({"in_proj.bias": "in_proj.bias", "out_proj.bias": "out_proj.bias"})
        for ours, theirs in names.items():
            state[f"{dst}.mixer.{ours}"] = w.take(f"{m}.{theirs}")
    embeddings_and_head(state, w, cfg, config, ("embeddings.weight", "embedding.weight"), "norm_f.weight")
    return state


IMPORTER = Importer("hf-mamba", ("mamba",), to_config, to_state)
