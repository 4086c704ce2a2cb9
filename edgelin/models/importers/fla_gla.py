"""flash-linear-attention GLA (GLAForCausalLM, fla/models/gla + fla/layers/gla.py) -> edgelin gla blocks."""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_output_norm, fla_short_convs,
    refuse, repeat_heads, require,
)
from edgelin.models.layers.base import FEATURE_MAPS

WHERE = "fla gla"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    fla_checks(cfg, WHERE)
    refuse(not cfg.get("use_gk", True) or cfg.get("use_gv", False), f"{WHERE}: only use_gk=True, use_gv=False is supported")
    fm = cfg.get("feature_map")
    refuse(fm is not None and fm not in FEATURE_MAPS, f"{WHERE}: feature_map {fm!r} is not supported")
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=require(cfg, "hidden_size", WHERE),
        n_layers=require(cfg, "num_hidden_layers", WHERE), n_heads=cfg.get("num_heads", 4), pattern=["gla"],
        d_ff=fla_ffn_dim(cfg), norm_eps=cfg.get("norm_eps", 1e-6), tie_embeddings=cfg.get("tie_word_embeddings", False),
        # GLABlock passes neither gate_logit_normalizer nor gate_low_rank_dim nor conv_bias: the layer defaults hold.
        mixers={"gla": {
            "expand_k": cfg.get("expand_k", 0.5), "expand_v": cfg.get("expand_v", 1.0), "gate_low_rank_dim": 16,
            "gate_logit_normalizer": 16.0, "use_short_conv": cfg.get("use_short_conv", False), "conv_size": cfg.get("conv_size", 4),
            "use_output_gate": cfg.get("use_output_gate", True), "norm_eps": cfg.get("norm_eps", 1e-6), "conv_bias": False,
            "clamp_min": cfg.get("clamp_min"), "feature_map": fm,
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["gla"]
    H = config.n_heads
    groups = H // (cfg.get("num_kv_heads") or H)
    key_dim, value_dim = round(config.d_model * o["expand_k"]), round(config.d_model * o["expand_v"])
    hk, hv = key_dim // H, value_dim // H
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        fla_block(state, w, i)
        a, m = f"model.layers.{i}.attn", f"blocks.{i}.mixer"
        # Grouped k/v heads (num_kv_heads) are repeated into full heads: fla repeats kv head j for heads j*g..j*g+g-1.
        state[f"{m}.q_proj.weight"] = w.take(f"{a}.q_proj.weight")
        state[f"{m}.k_proj.weight"] = repeat_heads(w.take(f"{a}.k_proj.weight"), groups, hk)
        state[f"{m}.v_proj.weight"] = repeat_heads(w.take(f"{a}.v_proj.weight"), groups, hv)
        state[f"{m}.gk_proj.0.weight"] = w.take(f"{a}.gk_proj.0.weight")
        state[f"{m}.gk_proj.1.weight"] = repeat_heads(w.take(f"{a}.gk_proj.1.weight"), groups, hk)
        state[f"{m}.gk_proj.1.bias"] = repeat_heads(w.take(f"{a}.gk_proj.1.bias"), groups, hk)
        if o["use_short_conv"]:
            for k, v in fla_short_convs(w, a, False, (1, groups, groups), (hk, hk, hv)).items():
                state[f"{m}.conv.{k}"] = v
        if o["use_output_gate"]:
            state[f"{m}.g_proj.weight"] = w.take(f"{a}.g_proj.weight")
        state[f"{m}.o_norm.weight"] = fla_output_norm(w, a, hv, bool(cfg.get("elementwise_affine", True)))
        state[f"{m}.o_proj.weight"] = w.take(f"{a}.o_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-gla", ("gla",), to_config, to_state)
