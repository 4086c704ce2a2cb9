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

from edgelin.models.config import MAX_LAYERS, LMConfig, is_int
from edgelin.models.importers.common import Fields, Importer, Weights, embeddings_and_head, gated_mlp, refuse

WHERE = "hf lfm2"


def layer_types(c: Fields) -> list[str]:
    n = c.integer("num_hidden_layers", most=MAX_LAYERS)  # capped here: the types list is as long
    types = c.array("layer_types", None)
    if types:
        if not all(isinstance(t, str) for t in types):
            c.fail("layer_types", "a list of strings", types)
    else:
        full = c.array("full_attn_idxs", None) or range(n)
        if not all(is_int(i) for i in full):
            c.fail("full_attn_idxs", "a list of layer indexes", full)
        full = set(full)
        types = ["full_attention" if i in full else "conv" for i in range(n)]
    bad = sorted(set(types) - {"conv", "full_attention"})
    refuse(bool(bad), f"{WHERE}: unknown layer type(s) {', '.join(map(repr, bad[:5]))}")
    refuse(len(types) != n, f"{WHERE}: {len(types)} layer_types for {n} layers")
    return types


def ffn_dim(c: Fields) -> int:
    ff = c.integer("block_ff_dim", c.integer("intermediate_size", 12288))  # Lfm2Config lets block_ff_dim win
    if c.flag("block_auto_adjust_ff_dim", True):
        ff = int(2 * ff / 3)
        mult = c.number("block_ffn_dim_multiplier", 1.0, positive=True, nullable=True)
        if mult is not None:
            ff = int(mult * ff)
            m = c.integer("block_multiple_of", 256)
            ff = m * ((ff + m - 1) // m)
    return ff


def rope_theta(c: Fields) -> float:
    rope = Fields(c.mapping("rope_parameters") or c.mapping("rope_scaling") or {}, WHERE)
    kind = rope.text("rope_type", rope.text("type", "default"))
    refuse(kind != "default", f"{WHERE}: rope type {kind!r} is not supported (default rotary only)")
    return rope.number("rope_theta", c.number("rope_theta", 1000000.0), positive=True)


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    d, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    eps = c.number("norm_eps", 1e-5)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=c.integer("num_hidden_layers"),
        n_heads=heads, pattern=["swa" if t == "full_attention" else "short_conv" for t in layer_types(c)],
        d_ff=ffn_dim(c), norm_eps=eps, tie_embeddings=c.flag("tie_word_embeddings", c.flag("tie_embedding", True)),
        mixers={
            "short_conv": {"kernel": c.integer("conv_L_cache", 3), "bias": c.flag("conv_bias", False)},
            "swa": {"window": max_context, "n_kv_heads": c.integer("num_key_value_heads", heads),
                    "head_dim": c.integer("head_dim", None) or d // heads, "rope_theta": rope_theta(c), "qk_norm": True,
                    "bias": False, "norm_eps": eps, "full_attention": True},
        },
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    bias = config.mixers["short_conv"]["bias"]
    for i, kind in enumerate(layer_types(Fields(cfg, WHERE))):
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
