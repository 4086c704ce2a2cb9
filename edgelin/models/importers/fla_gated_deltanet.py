"""flash-linear-attention Gated DeltaNet (GatedDeltaNetForCausalLM, fla/layers/gated_deltanet.py) -> edgelin gated_delta blocks."""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import (
    Fields, Importer, Weights, fla_block, fla_checks, fla_embeddings_and_head, fla_ffn_dim, fla_short_convs, refuse, repeat_heads,
)

WHERE = "fla gated_deltanet"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    fla_checks(c)
    d = c.integer("hidden_size")
    heads = c.integer("num_heads", 6)
    v_heads = c.integer("num_v_heads", None) or heads
    refuse(v_heads % heads != 0, f"{WHERE}: num_v_heads {v_heads} is not a multiple of num_heads {heads}")
    act = c.text("output_gate_activation", "swish")
    refuse(act not in ("swish", "silu", "sigmoid"), f"{WHERE}: output_gate_activation {act!r} is not supported")
    eps = c.number("norm_eps", 1e-6)
    # Grouped value heads (num_v_heads > num_heads) share q/k: edgelin repeats q/k into num_v_heads full heads.
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=c.integer("num_hidden_layers"),
        n_heads=math.gcd(v_heads, d), pattern=["gated_delta"], d_ff=fla_ffn_dim(c), norm_eps=eps,
        tie_embeddings=c.flag("tie_word_embeddings", False),
        mixers={"gated_delta": {
            "heads": v_heads, "head_dim": c.integer("head_dim", 256), "expand_v": c.number("expand_v", 2.0),
            "use_short_conv": c.flag("use_short_conv", True), "conv_size": c.integer("conv_size", 4), "conv_bias": False,
            "norm_eps": eps, "use_gate": c.flag("use_gate", True), "gate_activation": act,
            "allow_neg_eigval": c.flag("allow_neg_eigval", False), "l2norm_eps_inside": True,
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    o = config.mixers["gated_delta"]
    groups = o["heads"] // Fields(cfg, WHERE).integer("num_heads", 6)
    hk = o["head_dim"]
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        fla_block(state, w, i)
        a, m = f"model.layers.{i}.attn", f"blocks.{i}.mixer"
        state[f"{m}.q_proj.weight"] = repeat_heads(w.take(f"{a}.q_proj.weight"), groups, hk)
        state[f"{m}.k_proj.weight"] = repeat_heads(w.take(f"{a}.k_proj.weight"), groups, hk)
        for name in ("v_proj.weight", "a_proj.weight", "b_proj.weight", "A_log", "dt_bias", "o_norm.weight", "o_proj.weight"):
            state[f"{m}.{name}"] = w.take(f"{a}.{name}")
        if o["use_short_conv"]:
            for k, v in fla_short_convs(w, a, False, (groups, groups, 1), (hk, hk, 1)).items():
                state[f"{m}.conv.{k}"] = v
        if o["use_gate"]:
            state[f"{m}.g_proj.weight"] = w.take(f"{a}.g_proj.weight")
    fla_embeddings_and_head(state, w, cfg, config)
    return state


IMPORTER = Importer("fla-gated-deltanet", ("gated_deltanet",), to_config, to_state)
