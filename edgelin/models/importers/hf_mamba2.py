"""Hugging Face transformers Mamba2 (Mamba2ForCausalLM / Mamba2Model) -> edgelin mamba2 blocks."""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Importer, Weights, embeddings_and_head, refuse, require

WHERE = "hf mamba2"


def number(v: Any) -> float:
    """A float from config.json; transformers writes infinity as {"__float__": "Infinity"} (or Infinity)."""
    return float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v)


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    d = require(cfg, "hidden_size", WHERE)
    expand, head_dim = cfg.get("expand", 2), cfg.get("head_dim", 64)
    heads = cfg.get("num_heads", d * expand // head_dim)
    refuse(d * expand != heads * head_dim, f"{WHERE}: hidden_size * expand ({d * expand}) != num_heads * head_dim ({heads * head_dim})")
    refuse(cfg.get("hidden_act", "silu") != "silu", f"{WHERE}: hidden_act {cfg.get('hidden_act')!r} is not supported (silu only)")
    lo, hi = (number(v) for v in (list(cfg.get("time_step_limit", [0.0, math.inf])) + [math.inf])[:2])
    return LMConfig(
        vocab_size=require(cfg, "vocab_size", WHERE), d_model=d, n_layers=require(cfg, "num_hidden_layers", WHERE),
        n_heads=math.gcd(heads, d), pattern=["mamba2"], d_ff=-1, norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        mixers={"mamba2": {
            "expand": expand, "head_dim": head_dim, "state_size": cfg.get("state_size", 128), "n_groups": cfg.get("n_groups", 8),
            "conv_kernel": cfg.get("conv_kernel", 4), "conv_bias": cfg.get("use_conv_bias", True), "proj_bias": cfg.get("use_bias", False),
            "norm_eps": cfg.get("layer_norm_epsilon", 1e-5), "dt_min": float(lo), "dt_max": None if math.isinf(hi) else float(hi),
        }},
    )


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    w.strip("backbone.")
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        state[f"{dst}.mixer_norm.weight"] = w.take(f"{src}.norm.weight")
        m = f"{src}.mixer"
        state[f"{dst}.mixer.in_proj.weight"] = w.take(f"{m}.in_proj.weight")
        state[f"{dst}.mixer.conv.weight"] = w.take(f"{m}.conv1d.weight")
        state[f"{dst}.mixer.out_proj.weight"] = w.take(f"{m}.out_proj.weight")
        if cfg.get("use_conv_bias", True):
            state[f"{dst}.mixer.conv.bias"] = w.take(f"{m}.conv1d.bias")
        if cfg.get("use_bias", False):
            state[f"{dst}.mixer.in_proj.bias"] = w.take(f"{m}.in_proj.bias")
            state[f"{dst}.mixer.out_proj.bias"] = w.take(f"{m}.out_proj.bias")
        for name in ("dt_bias", "A_log", "D"):
            state[f"{dst}.mixer.{name}"] = w.take(f"{m}.{name}")
        state[f"{dst}.mixer.norm.weight"] = w.take(f"{m}.norm.weight")
    embeddings_and_head(state, w, cfg, config, ("embeddings.weight", "embedding.weight"), "norm_f.weight")
    return state


IMPORTER = Importer("hf-mamba2", ("mamba2",), to_config, to_state)
