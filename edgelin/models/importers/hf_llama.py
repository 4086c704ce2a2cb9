"""Hugging Face transformers Llama (LlamaForCausalLM), and the map it shares with Qwen2 and Qwen3
(hf_qwen2.py, hf_qwen3.py) -> edgelin swa blocks with full causal softmax attention.

RMSNorm, grouped-query attention with rotary embeddings (Llama 3.x's `llama3` frequency rescale
too), SwiGLU MLP. Full attention has no constant-size state, so each layer is exported as a KV
cache of `max_context` tokens (swa with full_attention=True, as LFM2's attention layers): exact up
to max_context tokens, sliding-window attention over the last max_context tokens past it.
"""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import MAX_LAYERS, LMConfig
from edgelin.models.importers.common import Fields, Importer, Weights, embeddings_and_head, refuse
from edgelin.models.layers.swa import LLAMA3_KEYS
from edgelin.runtime.schema import short

WHERE = "hf llama"
ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor", *LLAMA3_KEYS}


def rope(c: Fields, where: str, max_positions_default: int) -> dict[str, Any]:
    """swa's rope_theta and rope_scaling, as transformers 5 reads them: `rope_scaling` (older
    checkpoints) over `rope_parameters`, theta from that dict, else top-level `rope_theta`, else 10000."""
    key = "rope_scaling" if c.mapping("rope_scaling") else "rope_parameters"
    params = c.mapping(key) or {}
    unknown = sorted(set(params) - ROPE_KEYS)
    refuse(bool(unknown), f"{where}: {key} has unknown key(s) {', '.join(map(short, unknown[:5]))}")
    r = Fields(params, f"{where} {key} in")
    kind = r.text("rope_type", r.text("type", "default"))
    theta = r.number("rope_theta", c.number("rope_theta", 10000.0), positive=True)
    partial = r.number("partial_rotary_factor", c.number("partial_rotary_factor", 1.0, nullable=True) or 1.0, positive=True)
    refuse(partial != 1.0, f"{where}: partial_rotary_factor {partial} is not supported (rotary over the whole head only)")
    if kind == "default":
        return {"rope_theta": theta}
    refuse(kind != "llama3", f"{where}: rope type {short(kind)} is not supported (default and llama3 only)")
    scaling: dict[str, Any] = {"type": "llama3"}
    for name in ("factor", "low_freq_factor", "high_freq_factor"):
        scaling[name] = r.number(name, positive=True)
    # transformers lets a top-level original_max_position_embeddings win, then the dict's, then max_position_embeddings
    original = c.integer("original_max_position_embeddings", None)
    scaling["original_max_position_embeddings"] = original or r.integer(
        "original_max_position_embeddings", c.integer("max_position_embeddings", max_positions_default))
    refuse(scaling["high_freq_factor"] <= scaling["low_freq_factor"],
           f"{where}: rope high_freq_factor {scaling['high_freq_factor']} must be above low_freq_factor {scaling['low_freq_factor']}")
    return {"rope_theta": theta, "rope_scaling": scaling}


def full_attention_only(c: Fields, where: str) -> None:
    """Qwen2 / Qwen3: every layer must be full attention. transformers reads config.json's layer_types as
    given, else makes layers from max_window_layers on sliding when use_sliding_window and sliding_window are set."""
    n = c.integer("num_hidden_layers", most=MAX_LAYERS)
    types = c.array("layer_types", None)
    if types is not None:
        refuse(len(types) != n, f"{where}: {len(types)} layer_types for {n} layers")
        bad = sorted({short(t) for t in types if t != "full_attention"})
        refuse(bool(bad), f"{where}: layer type(s) {', '.join(bad[:5])} are not supported (full_attention only)")
    elif c.flag("use_sliding_window", False) and (c.integer("sliding_window", None) if "sliding_window" in c.cfg else 4096):
        first = c.integer("max_window_layers", 28, least=0)
        refuse(first < n, f"{where}: sliding-window layers (use_sliding_window with max_window_layers {first} "
                          f"< num_hidden_layers {n}) are not supported")


def llama_config(cfg: dict[str, Any], max_context: int, where: str, *, qkv_bias: bool, o_bias: bool, mlp_bias: bool,
                 qk_norm: bool, kv_heads_default: int | None, head_dim_default: int | None,
                 max_positions_default: int) -> LMConfig:
    """The LMConfig of a Llama-shaped checkpoint; the family's fixed choices are the keyword arguments
    (`*_default`: the config class's value when config.json has no such key; None: derived from the sizes)."""
    c = Fields(cfg, where)
    d, heads = c.integer("hidden_size"), c.integer("num_attention_heads")
    act = c.text("hidden_act", "silu")
    refuse(act not in ("silu", "swish"), f"{where}: hidden_act {short(act)} is not supported (silu only)")
    kv = c.integer("num_key_value_heads", None) if "num_key_value_heads" in cfg else kv_heads_default
    head_dim = c.integer("head_dim", head_dim_default)  # null: derived where the default is (Llama, Qwen2)
    eps = c.number("rms_norm_eps", 1e-6, positive=True)
    swa = {"window": max_context, "n_kv_heads": kv or heads, "head_dim": head_dim or d // heads, **rope(c, where, max_positions_default),
           "qk_norm": qk_norm, "bias": qkv_bias, "o_bias": o_bias, "norm_eps": eps, "full_attention": True}
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=c.integer("num_hidden_layers", most=MAX_LAYERS),
        n_heads=heads, pattern=["swa"], d_ff=c.integer("intermediate_size"), norm_eps=eps,
        tie_embeddings=c.flag("tie_word_embeddings", False), mlp_bias=mlp_bias, mixers={"swa": swa},
    )


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    bias, mlp_bias = c.flag("attention_bias", False), c.flag("mlp_bias", False)
    return llama_config(cfg, max_context, WHERE, qkv_bias=bias, o_bias=bias, mlp_bias=mlp_bias, qk_norm=False,
                        kv_heads_default=None, head_dim_default=None, max_positions_default=2048)


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    """Llama, Qwen2 and Qwen3 name their weights alike (model.layers.{i}.self_attn / mlp, model.norm)."""
    w.strip("model.")
    swa = config.mixers["swa"]
    biases = {"q_proj": swa["bias"], "k_proj": swa["bias"], "v_proj": swa["bias"], "o_proj": swa["o_bias"]}
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        state[f"{dst}.mixer_norm.weight"] = w.take(f"{src}.input_layernorm.weight")
        state[f"{dst}.mlp_norm.weight"] = w.take(f"{src}.post_attention_layernorm.weight")
        for proj, bias in biases.items():
            state[f"{dst}.mixer.{proj}.weight"] = w.take(f"{src}.self_attn.{proj}.weight")
            if bias:
                state[f"{dst}.mixer.{proj}.bias"] = w.take(f"{src}.self_attn.{proj}.bias")
        if swa["qk_norm"]:
            for norm in ("q_norm", "k_norm"):
                state[f"{dst}.mixer.{norm}.weight"] = w.take(f"{src}.self_attn.{norm}.weight")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            state[f"{dst}.mlp.{proj}.weight"] = w.take(f"{src}.mlp.{proj}.weight")
            if config.mlp_bias:
                state[f"{dst}.mlp.{proj}.bias"] = w.take(f"{src}.mlp.{proj}.bias")
    embeddings_and_head(state, w, cfg, config, ("embed_tokens.weight",), "norm.weight")
    return state


IMPORTER = Importer("hf-llama", ("llama",), to_config, to_state)
