"""Hugging Face transformers xLSTM (xLSTMForCausalLM / xLSTMModel, NX-AI's xLSTM-7b layout) -> edgelin mlstm blocks.

Every block is RMSNorm -> mLSTM layer -> residual, RMSNorm -> SwiGLU -> residual, as edgelin's; the
logits are soft-capped (LMConfig.logit_soft_cap). Options that only choose a kernel or a compute
dtype (chunkwise_kernel, mode, chunk_size, autocast_kernel_dtype, ...) leave the function unchanged
and are checked for their type only: edgelin computes in float32 and keeps the states in float32.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Fields, Importer, Weights, embeddings_and_head, refuse

WHERE = "hf xlstm"
DTYPES = ("float32", "bfloat16", "float16")
MODES = ("train", "train_with_padding", "inference")


def _choice(c: Fields, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = c.text(key, default)
    if value not in allowed:
        c.fail(key, f"one of {', '.join(allowed)}", value)
    return value


def ffn_width(c: Fields, d: int) -> int:
    """transformers' round_up_to_next_multiple_of(hidden_size * ffn_proj_factor, ffn_round_up_to_multiple_of)."""
    factor = c.number("ffn_proj_factor", 2.667, positive=True)
    multiple = c.integer("ffn_round_up_to_multiple_of", 64)
    if not math.isfinite(d * factor + multiple):
        c.fail("ffn_proj_factor", f"a number that keeps hidden_size ({d}) * ffn_proj_factor finite", factor)
    return int(((d * factor + multiple - 1) // multiple) * multiple)


def layers(c: Fields) -> int:
    """num_blocks builds the blocks, num_hidden_layers sizes the cache; either may stand for both."""
    blocks, hidden = c.integer("num_blocks", None), c.integer("num_hidden_layers", None)
    refuse(blocks is None and hidden is None, f"{WHERE} config.json has no 'num_blocks' or 'num_hidden_layers'")
    refuse(None not in (blocks, hidden) and blocks != hidden, f"{WHERE}: num_blocks {blocks} != num_hidden_layers {hidden}")
    return blocks if blocks is not None else hidden


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    d, embedding = c.integer("hidden_size", None), c.integer("embedding_dim", None)
    refuse(d is None and embedding is None, f"{WHERE} config.json has no 'hidden_size' or 'embedding_dim'")
    refuse(None not in (d, embedding) and embedding != d, f"{WHERE}: embedding_dim {embedding} != hidden_size {d}")
    d = d if d is not None else embedding
    refuse(c.flag("use_bias", False), f"{WHERE}: use_bias true is not supported (edgelin's norms and MLP have no bias)")
    _choice(c, "weight_mode", "single", ("single", "fused"))
    c.flag("add_out_norm", True)  # transformers applies out_norm whatever this says, and so does edgelin
    for key in ("norm_reduction_force_float32", "return_last_states", "use_cache"):
        c.flag(key, True)
    for key, default in (("chunkwise_kernel", "chunkwise--native_autograd"), ("sequence_kernel", "native_sequence__native"),
                         ("step_kernel", "native")):
        c.text(key, default)
    _choice(c, "mode", "inference", MODES)
    _choice(c, "autocast_kernel_dtype", "bfloat16", DTYPES)
    _choice(c, "inference_state_dtype", "float32", DTYPES)
    c.integer("chunk_size", 64)
    c.integer("max_inference_chunksize", 16384)
    norm_eps = c.number("norm_eps", 1e-6, positive=True)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=layers(c), n_heads=c.integer("num_heads", 8),
        pattern=["mlstm"], d_ff=ffn_width(c, d), norm_eps=norm_eps, tie_embeddings=c.flag("tie_word_embeddings", False),
        logit_soft_cap=c.number("output_logit_soft_cap", 30.0, positive=True, nullable=True),
        mixers={"mlstm": {
            "expand_k": c.number("qk_dim_factor", 0.5, positive=True), "expand_v": c.number("v_dim_factor", 1.0, positive=True),
            "gate_soft_cap": c.number("gate_soft_cap", 15.0, positive=True, nullable=True),
            "eps": c.number("eps", 1e-6, positive=True), "norm_eps": norm_eps,
        }},
    )


def _split(w: Weights, name: str, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """The row blocks of one fused tensor (a missing one is reported by Weights.check with the others)."""
    t = w.take(name)
    if not t.numel():
        return (t,) * len(sizes)
    if t.shape[0] != sum(sizes):
        raise RuntimeError(f"{name} has {t.shape[0]} rows, config.json implies {sum(sizes)}")
    return t.split(sizes)


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    w.strip("backbone.")
    H, d, ffn = config.n_heads, config.d_model, config.ffn_dim
    qk, v = int(d * config.mixers["mlstm"]["expand_k"]), int(d * config.mixers["mlstm"]["expand_v"])
    fused = Fields(cfg, WHERE).text("weight_mode", "single") == "fused"
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        b = f"blocks.{i}"
        m = f"{b}.mlstm_layer"
        if fused:
            q, k, val, o = _split(w, f"{m}.qkv_opreact.weight", [qk, qk, v, v])
            ig, fg = _split(w, f"{m}.ifgate_preact.weight", [H, H])
            ib, fb = _split(w, f"{m}.ifgate_preact.bias", [H, H])
            gate, up = _split(w, f"{b}.ffn.proj_up_gate_z.weight", [ffn, ffn])
        else:
            q, k, val, o = (w.take(f"{m}.{name}.weight") for name in ("q", "k", "v", "ogate_preact"))
            ig, fg = w.take(f"{m}.igate_preact.weight"), w.take(f"{m}.fgate_preact.weight")
            ib, fb = w.take(f"{m}.igate_preact.bias"), w.take(f"{m}.fgate_preact.bias")
            gate, up = w.take(f"{b}.ffn.proj_up_gate.weight"), w.take(f"{b}.ffn.proj_up.weight")
        mixer = {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": val, "ogate_proj.weight": o,
                 "igate_proj.weight": ig, "fgate_proj.weight": fg, "igate_bias": ib, "fgate_bias": fb,
                 "o_norm.weight": w.take(f"{m}.multihead_norm.weight"), "o_proj.weight": w.take(f"{m}.out_proj.weight")}
        state.update({f"{b}.mixer.{name}": t for name, t in mixer.items()})
        state[f"{b}.mixer_norm.weight"] = w.take(f"{b}.norm_mlstm.weight")
        state[f"{b}.mlp_norm.weight"] = w.take(f"{b}.norm_ffn.weight")
        state[f"{b}.mlp.gate_proj.weight"], state[f"{b}.mlp.up_proj.weight"] = gate, up
        state[f"{b}.mlp.down_proj.weight"] = w.take(f"{b}.ffn.proj_down.weight")
    embeddings_and_head(state, w, cfg, config, ("embeddings.weight",), "out_norm.weight")
    return state


IMPORTER = Importer("hf-xlstm", ("xlstm",), to_config, to_state)
