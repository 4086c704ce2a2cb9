"""Hugging Face transformers LFM2 (Lfm2ForCausalLM) -> edgelin short_conv + capped full-attention blocks.

LFM2 interleaves gated short convolutions with grouped-query full attention (q/k RMSNorm per
head, rotary). Full attention has no constant-size state, so each attention layer is exported
as a KV cache of `max_context` tokens (swa with full_attention=True; the manifest's
max_context). Up to max_context tokens the outputs are exact; past it the oldest tokens drop
out of those layers' cache, i.e. they become sliding-window attention over the last
max_context tokens.
"""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Importer, Weights, embeddings_and_head, gated_mlp, refuse, require

WHERE = "hf lfm2"


def layer_types(cfg: dict[str, Any]) -> list[str]:
    n = require(cfg, "num_hidden_layers", WHERE)
    if cfg.get("layer_types"):
        types = list(cfg["layer_types"])
    else:
        full = set(cfg.get("full_attn_idxs") or range(n))
        types = ["full_attention" if i in full else "conv" for i in range(n)]
    bad = sorted(set(types) - {"conv", "full_attention"})
    refuse(bool(bad), f"{WHERE}: unknown layer type(s) {', '.join(bad)}")
    refuse(len(types) != n, f"{WHERE}: {len(types)} layer_types for {n} layers")
    return types


def ffn_dim(cfg: dict[str, Any]) -> int:
    ff = cfg.get("block_ff_dim", cfg.get("intermediate_size", 12288))  # Lfm2Config lets block_ff_dim win
    if cfg.get("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = cfg.get("block_ffn_dim_multiplier", 1.0)
        if mult is not None:
            ff = int(mult * ff)
            m = cfg.get("block_multiple_of", 256)
            ff = m * ((ff + m - 1) // m)
    return ff


def rope_theta(cfg: dict[str, Any]) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    refuse(rope.get("rope_type", rope.get("type", "default")) != "default",
           f"{WHERE}: rope type {rope.get('rope_type', rope.get('type'))!r} is not supported (default rotary only)")
    return float(rope.get("rope_theta", cfg.get("rope_theta", 1000000.0)))


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    d, heads = require(cfg, "hidden_size", WHERE), require(cfg, "num_attention_heads", WHERE)
    eps = cfg.get("norm_eps", 1e-5)
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=d, n_layers=require(cfg, "num_hidden_layers", WHERE),
        n_heads=heads, pattern=["swa" if t == "full_attention" else "short_conv" for t in layer_types(cfg)],
        d_ff=ffn_dim(cfg), norm_eps=eps, tie_embeddings=cfg.get("tie_word_embeddings", cfg.get("tie_embedding", True)),
        mixers={
            "short_conv": {"kernel": cfg.get("conv_L_cache", 3), "bias": cfg.get("conv_bias", False)},
            "swa": {"window": max_context, "n_kv_heads": cfg.get("num_key_value_heads", heads), "head_dim": cfg.get("head_dim") or d // heads,
                    "rope_theta": rope_theta(cfg), "qk_norm": True, "bias": False, "norm_eps": eps, "full_attention": True},
        },
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    bias = cfg.get("conv_bias", False)
    for i, kind in enumerate(layer_types(cfg)):
        src, dst = f"model.layers.{i}", f"blocks.{i}"
        state[f"{dst}.mixer_norm.weight"] = w.take(f"{src}.operator_norm.weight")
        state[f"{dst}.mlp_norm.weight"] = w.take(f"{src}.ffn_norm.weight")
        gated_mlp(state, w, i, f"{src}.feed_forward", ("w1", "w3", "w2"))
        if kind == "conv":
            for ours, theirs in (("in_proj", "in_proj"), ("conv", "conv"), ("out_proj", "out_proj")):
                state[f"{dst}.mixer.{ours}.weight"] = w.take(f"{src}.conv.{theirs}.weight")
                if bias:
                    state[f"{dst}.mixer.{ours}.bias"] = w.take(f"{src}.conv.{theirs}.bias")
        else:
            a = f"{src}.self_attn"
            for ours, theirs in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("o_proj", "out_proj"),
                                 ("q_norm", "q_layernorm"), ("k_norm", "k_layernorm")):
                state[f"{dst}.mixer.{ours}.weight"] = w.take(f"{a}.{theirs}.weight")
    embeddings_and_head(state, w, cfg, config, ("model.embed_tokens.weight",), "model.embedding_norm.weight")
    return state


IMPORTER = Importer("hf-lfm2", ("lfm2",), to_config, to_state)
