"""flash-linear-attention DeltaNet (DeltaNetForCausalLM, fla/layers/delta_net.py) -> edgelin delta_net blocks."""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_short_convs, refuse, require,
)

WHERE = "fla delta_net"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    fla_checks(cfg, WHERE)
    act, norm = cfg.get("qk_activation", "silu"), cfg.get("qk_norm", "l2")
    refuse(act not in ("silu", "relu", "elu", "identity"), f"{WHERE}: qk_activation {act!r} is not supported")
    refuse(norm not in ("l2", "sum"), f"{WHERE}: qk_norm {norm!r} is not supported")
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=require(cfg, "hidden_size", WHERE),
        n_layers=require(cfg, "num_hidden_layers", WHERE), n_heads=cfg.get("num_heads", 16), pattern=["delta_net"],
        d_ff=fla_ffn_dim(cfg), norm_eps=cfg.get("norm_eps", 1e-6), tie_embeddings=cfg.get("tie_word_embeddings", False),
        mixers={"delta_net": {
            "expand_k": cfg.get("expand_k", 1.0), "expand_v": cfg.get("expand_v", 1.0), "use_beta": cfg.get("use_beta", True),
            "use_gate": cfg.get("use_gate", False), "use_short_conv": cfg.get("use_short_conv", True),
            "conv_size": cfg.get("conv_size", 4), "conv_bias": False, "allow_neg_eigval": cfg.get("allow_neg_eigval", False),
            "qk_activation": act, "qk_norm": norm, "norm_eps": cfg.get("norm_eps", 1e-6),
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["delta_net"]
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        fla_block(state, w, i)
        a, m = f"model.layers.{i}.attn", f"blocks.{i}.mixer"
        for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_norm.weight", "o_proj.weight"):
            state[f"{m}.{name}"] = w.take(f"{a}.{name}")
        if o["use_beta"]:
            state[f"{m}.b_proj.weight"] = w.take(f"{a}.b_proj.weight")
        if o["use_short_conv"]:
            for k, v in fla_short_convs(w, a, False).items():
                state[f"{m}.conv.{k}"] = v
        if o["use_gate"]:
            state[f"{m}.g_proj.weight"] = w.take(f"{a}.g_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-deltanet", ("delta_net",), to_config, to_state)
