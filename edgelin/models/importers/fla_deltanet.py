"""flash-linear-attention DeltaNet (DeltaNetForCausalLM, fla/layers/delta_net.py) -> edgelin delta_net blocks."""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Fields, Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_short_convs, refuse,
)

WHERE = "fla delta_net"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    fla_checks(c)
    act, norm = c.text("qk_activation", "silu"), c.text("qk_norm", "l2")
    refuse(act not in ("silu", "relu", "elu", "identity"), f"{WHERE}: qk_activation {act!r} is not supported")
    refuse(norm not in ("l2", "sum"), f"{WHERE}: qk_norm {norm!r} is not supported")
    eps = c.number("norm_eps", 1e-6)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=c.integer("hidden_size"),
        n_layers=c.integer("num_hidden_layers"), n_heads=c.integer("num_heads", 16), pattern=["delta_net"],
        d_ff=fla_ffn_dim(c), norm_eps=eps, tie_embeddings=c.flag("tie_word_embeddings", False),
        mixers={"delta_net": {
            "expand_k": c.number("expand_k", 1.0), "expand_v": c.number("expand_v", 1.0), "use_beta": c.flag("use_beta", True),
            "use_gate": c.flag("use_gate", False), "use_short_conv": c.flag("use_short_conv", True),
            "conv_size": c.integer("conv_size", 4), "conv_bias": False, "allow_neg_eigval": c.flag("allow_neg_eigval", False),
            "qk_activation": act, "qk_norm": norm, "norm_eps": eps,
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
