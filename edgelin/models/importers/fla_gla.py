"""flash-linear-attention GLA (GLAForCausalLM, fla/models/gla + fla/layers/gla.py) -> edgelin gla blocks."""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Fields, Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_output_norm, fla_short_convs,
    refuse, repeat_heads,
)
from edgelin.models.layers.base import FEATURE_MAPS

WHERE = "fla gla"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    fla_checks(c)
    refuse(not c.flag("use_gk", True) or c.flag("use_gv", False), f"{WHERE}: only use_gk=True, use_gv=False is supported")
    fm = c.text("feature_map", None)
    refuse(fm is not None and fm not in FEATURE_MAPS, f"{WHERE}: feature_map {fm!r} is not supported")
    heads = c.integer("num_heads", 4)
    kv_heads = c.integer("num_kv_heads", None) or heads
    refuse(heads % kv_heads != 0, f"{WHERE}: num_heads {heads} is not a multiple of num_kv_heads {kv_heads}")
    eps = c.number("norm_eps", 1e-6)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=c.integer("hidden_size"),
        n_layers=c.integer("num_hidden_layers"), n_heads=heads, pattern=["gla"],
        d_ff=fla_ffn_dim(c), norm_eps=eps, tie_embeddings=c.flag("tie_word_embeddings", False),
        # GLABlock passes neither gate_logit_normalizer nor gate_low_rank_dim nor conv_bias: the layer defaults hold.
        mixers={"gla": {
            "expand_k": c.number("expand_k", 0.5), "expand_v": c.number("expand_v", 1.0), "gate_low_rank_dim": 16,
            "gate_logit_normalizer": 16.0, "use_short_conv": c.flag("use_short_conv", False), "conv_size": c.integer("conv_size", 4),
            "use_output_gate": c.flag("use_output_gate", True), "norm_eps": eps, "conv_bias": False,
            "clamp_min": c.number("clamp_min", None), "feature_map": fm,
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["gla"]
    H = config.n_heads
    c = Fields(cfg, WHERE)
    groups = H // (c.integer("num_kv_heads", None) or H)
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
        state[f"{m}.o_norm.weight"] = fla_output_norm(w, a, hv, c.flag("elementwise_affine", True))
        state[f"{m}.o_proj.weight"] = w.take(f"{a}.o_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-gla", ("gla",), to_config, to_state)
