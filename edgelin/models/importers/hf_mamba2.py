"""Hugging Face transformers Mamba2 (Mamba2ForCausalLM / Mamba2Model) -> edgelin mamba2 blocks."""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig, is_number
from edgelin.models.importers.common import Fields, Importer, Weights, embeddings_and_head, refuse

WHERE = "hf mamba2"


def time_step_limit(c: Fields) -> tuple[float, float]:
    """(low, high) of time_step_limit; transformers writes infinity as {"__float__": "Infinity"} (or Infinity)."""
    raw = c.array("time_step_limit", [0.0, math.inf])
    limits = [_float(v) for v in raw]
    if not 1 <= len(raw) <= 2 or None in limits:
        c.fail("time_step_limit", "a list of one or two numbers", raw)
    return limits[0], (limits + [math.inf])[1]


def _float(v: Any) -> float | None:
    if isinstance(v, dict) and list(v) == ["__float__"] and isinstance(v["__float__"], str):
        try:
            return float(v["__float__"])
        except ValueError:
            return None
    return float(v) if isinstance(v, float) or is_number(v) else None


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    d = c.integer("hidden_size")
    expand, head_dim = c.integer("expand", 2), c.integer("head_dim", 64)
    heads = c.integer("num_heads", d * expand // head_dim)
    refuse(d * expand != heads * head_dim, f"{WHERE}: hidden_size * expand ({d * expand}) != num_heads * head_dim ({heads * head_dim})")
    act = c.text("hidden_act", "silu")
    refuse(act != "silu", f"{WHERE}: hidden_act {act!r} is not supported (silu only)")
    lo, hi = time_step_limit(c)
    eps = c.number("layer_norm_epsilon", 1e-5)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=c.integer("num_hidden_layers"),
        n_heads=math.gcd(heads, d), pattern=["mamba2"], d_ff=-1, norm_eps=eps,
        tie_embeddings=c.flag("tie_word_embeddings", False),
        mixers={"mamba2": {
            "expand": expand, "head_dim": head_dim, "state_size": c.integer("state_size", 128), "n_groups": c.integer("n_groups", 8),
            "conv_kernel": c.integer("conv_kernel", 4), "conv_bias": c.flag("use_conv_bias", True), "proj_bias": c.flag("use_bias", False),
            "norm_eps": eps, "dt_min": lo, "dt_max": None if math.isinf(hi) else hi,
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
        if config.mixers["mamba2"]["conv_bias"]:
            state[f"{dst}.mixer.conv.bias"] = w.take(f"{m}.conv1d.bias")
        if config.mixers["mamba2"]["proj_bias"]:
            state[f"{dst}.mixer.in_proj.bias"] = w.take(f"{m}.in_proj.bias")
            state[f"{dst}.mixer.out_proj.bias"] = w.take(f"{m}.out_proj.bias")
        for name in ("dt_bias", "A_log", "D"):
            state[f"{dst}.mixer.{name}"] = w.take(f"{m}.{name}")
        state[f"{dst}.mixer.norm.weight"] = w.take(f"{m}.norm.weight")
    embeddings_and_head(state, w, cfg, config, ("embeddings.weight", "embedding.weight"), "norm_f.weight")
    return state


IMPORTER = Importer("hf-mamba2", ("mamba2",), to_config, to_state)
