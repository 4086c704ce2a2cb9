"""flash-linear-attention RetNet (RetNetForCausalLM, fla/layers/multiscale_retention.py) -> edgelin retention blocks.

fla rotates q and k by their absolute positions (RotaryEmbedding, base 10000, no xpos); edgelin's
retention keeps the state in the frame of the latest token instead (see layers/retention.py),
which gives the same outputs without a position state.
"""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_output_norm, refuse, repeat_heads, require,
)
from edgelin.models.layers.base import FEATURE_MAPS

WHERE = "fla retnet"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    fla_checks(cfg, WHERE)
    fm = cfg.get("feature_map")
    refuse(fm is not None and fm not in FEATURE_MAPS, f"{WHERE}: feature_map {fm!r} is not supported")
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=require(cfg, "hidden_size", WHERE),
        n_layers=require(cfg, "num_hidden_layers", WHERE), n_heads=cfg.get("num_heads", 8), pattern=["retention"],
        d_ff=fla_ffn_dim({"hidden_ratio": 2, **cfg}), norm_eps=cfg.get("norm_eps", 1e-6),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        # RetNetBlock passes no use_short_conv: the layer default (False) holds.
        mixers={"retention": {
            "expand_k": cfg.get("expand_k", 1.0), "expand_v": cfg.get("expand_v", 2.0), "norm_eps": cfg.get("norm_eps", 1e-6),
            "use_output_gate": cfg.get("use_output_gate", True), "feature_map": fm, "rotary": True, "rope_theta": 10000.0,
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["retention"]
    H = config.n_heads
    groups = H // (cfg.get("num_kv_heads") or H)
    hk, hv = round(config.d_model * o["expand_k"]) // H, round(config.d_model * o["expand_v"]) // H
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        fla_block(state, w, i)
        a, m = f"model.layers.{i}.attn", f"blocks.{i}.mixer"
        state[f"{m}.q_proj.weight"] = w.take(f"{a}.q_proj.weight")
        state[f"{m}.k_proj.weight"] = repeat_heads(w.take(f"{a}.k_proj.weight"), groups, hk)
        state[f"{m}.v_proj.weight"] = repeat_heads(w.take(f"{a}.v_proj.weight"), groups, hv)
        if o["use_output_gate"]:
            state[f"{m}.g_proj.weight"] = w.take(f"{a}.g_proj.weight")
        state[f"{m}.o_norm.weight"] = fla_output_norm(w, a, hv, bool(cfg.get("elementwise_affine", True)))
        state[f"{m}.o_proj.weight"] = w.take(f"{a}.o_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-retnet", ("retnet",), to_config, to_state)
