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
    Fields, Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_output_norm, refuse, repeat_heads,
)
from edgelin.models.layers.base import FEATURE_MAPS

WHERE = "fla retnet"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    fla_checks(c)
    fm = c.text("feature_map", None)
    refuse(fm is not None and fm not in FEATURE_MAPS, f"{WHERE}: feature_map {fm!r} is not supported")
    heads = c.integer("num_heads", 8)
    kv_heads = c.integer("num_kv_heads", None) or heads
    refuse(heads % kv_heads != 0, f"{WHERE}: num_heads {heads} is not a multiple of num_kv_heads {kv_heads}")
    eps = c.number("norm_eps", 1e-6)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=c.integer("hidden_size"),
        n_layers=c.integer("num_hidden_layers"), n_heads=heads, pattern=["retention"],
        d_ff=fla_ffn_dim(c, hidden_ratio=2), norm_eps=eps, tie_embeddings=c.flag("tie_word_embeddings", False),
        # RetNetBlock passes no use_short_conv: the layer default (False) holds.
        mixers={"retention": {
            "expand_k": c.number("expand_k", 1.0), "expand_v": c.number("expand_v", 2.0), "norm_eps": eps,
            "use_output_gate": c.flag("use_output_gate", True), "feature_map": fm, "rotary": True, "rope_theta": 10000.0,
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["retention"]
    H = config.n_heads
    c = Fields(cfg, WHERE)
    groups = H // (c.integer("num_kv_heads", None) or H)
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
        state[f"{m}.o_norm.weight"] = fla_output_norm(w, a, hv, c.flag("elementwise_affine", True))
        state[f"{m}.o_proj.weight"] = w.take(f"{a}.o_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-retnet", ("retnet",), to_config, to_state)
