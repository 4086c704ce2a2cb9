"""Hugging Face transformers GPT-2 (GPT2LMHeadModel / GPT2Model) -> edgelin swa blocks with full
attention, LayerNorm, a GELU MLP with biases and learned absolute positions.

GPT-2 has no rotary embedding: its positions are a learned table (wpe) added to the token
embeddings, so the LM carries how many tokens it has seen as a state (`position`, layer 0; see
lm.py). Conv1D layers store their weights [in, out], the transpose of a Linear's; c_attn holds q,
k and v side by side. Attention is full causal softmax attention scaled by 1/sqrt(head_dim),
exported as a KV cache of max_context tokens, at most n_positions (the positions GPT-2 has
embeddings for): exact up to that many tokens.
"""
from __future__ import annotations

from typing import Any

import torch

from edgelin.models.config import MAX_LAYERS, LMConfig
from edgelin.models.importers.common import Fields, Importer, Weights, refuse
from edgelin.runtime.schema import short

WHERE = "hf gpt2"
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_python_tanh": "gelu_tanh"}  # transformers' ACT2FN names -> LMConfig.mlp


def size(c: Fields, key: str, alias: str, most: int | None = None) -> int:
    """GPT2Config's own key (n_embd, ...) or the generic name transformers maps onto it (hidden_size, ...)."""
    if key in c.cfg and alias in c.cfg:
        refuse(c.integer(key, most=most) != c.integer(alias, most=most), f"{WHERE}: {key} and {alias} differ")
    return c.integer(key if key in c.cfg or alias not in c.cfg else alias, most=most)


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    d, heads = size(c, "n_embd", "hidden_size"), size(c, "n_head", "num_attention_heads")
    positions = size(c, "n_positions", "max_position_embeddings")
    act = c.text("activation_function", "gelu_new")
    refuse(act not in ACTIVATIONS, f"{WHERE}: activation_function {short(act)} is not supported ({', '.join(ACTIVATIONS)})")
    refuse(not c.flag("scale_attn_weights", True), f"{WHERE}: scale_attn_weights false is not supported")
    refuse(c.flag("scale_attn_by_inverse_layer_idx", False),
           f"{WHERE}: scale_attn_by_inverse_layer_idx true is not supported (one attention scale for every layer)")
    c.flag("reorder_and_upcast_attn", False)  # the same arithmetic in float32, which edgelin computes in
    refuse(c.flag("add_cross_attention", False), f"{WHERE}: add_cross_attention true (an encoder-decoder's decoder) is not supported")
    eps = c.number("layer_norm_epsilon", 1e-5, positive=True)
    inner = c.integer("n_inner", None)
    return LMConfig(
        vocab_size=c.integer("vocab_size"), d_model=d, n_layers=size(c, "n_layer", "num_hidden_layers", MAX_LAYERS),
        n_heads=heads, pattern=["swa"], d_ff=4 * d if inner is None else inner, norm_eps=eps,
        tie_embeddings=c.flag("tie_word_embeddings", True), norm="layer", mlp=ACTIVATIONS[act], mlp_bias=True,
        max_positions=positions,
        mixers={"swa": {"window": min(max_context, positions), "rope_theta": 0.0, "bias": True, "norm_eps": eps,
                        "full_attention": True}},
    )


def conv1d(w: Weights, name: str) -> torch.Tensor:
    """A Conv1D weight [in, out] as a Linear's [out, in]."""
    return w.take(name).transpose(0, -1)


def to_state(cfg: dict[str, Any], config: LMConfig, w: Weights) -> dict[str, torch.Tensor]:
    w.strip("transformer.")
    state: dict[str, torch.Tensor] = {}
    for i in range(config.n_layers):
        src, dst = f"h.{i}", f"blocks.{i}"
        for ours, theirs in (("mixer_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for p in ("weight", "bias"):
                state[f"{dst}.{ours}.{p}"] = w.take(f"{src}.{theirs}.{p}")
        # c_attn [d, 3d]: q, k, v side by side (tensor_split: three parts whatever the shape, which build() checks)
        for p, parts in (("weight", conv1d(w, f"{src}.attn.c_attn.weight")), ("bias", w.take(f"{src}.attn.c_attn.bias"))):
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), torch.tensor_split(parts, 3)):
                state[f"{dst}.mixer.{proj}.{p}"] = part
        for ours, theirs in (("mixer.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
            state[f"{dst}.{ours}.weight"] = conv1d(w, f"{src}.{theirs}.weight")
            state[f"{dst}.{ours}.bias"] = w.take(f"{src}.{theirs}.bias")
    state["embed.weight"] = w.take("wte.weight")
    state["pos_embed.weight"] = w.take("wpe.weight")
    state["norm.weight"], state["norm.bias"] = w.take("ln_f.weight"), w.take("ln_f.bias")
    if not config.tie_embeddings:
        state["lm_head.weight"] = w.take("lm_head.weight")
    return state


IMPORTER = Importer("hf-gpt2", ("gpt2",), to_config, to_state)
