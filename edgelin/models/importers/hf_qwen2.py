"""Hugging Face transformers Qwen2 (Qwen2ForCausalLM) -> edgelin swa blocks with full attention.

Llama's map (hf_llama.py) with Qwen2's fixed choices: q/k/v projections with bias, o_proj and the
MLP without. Sliding-window layers (use_sliding_window with max_window_layers below the layer
count) are refused: their window differs from the full-attention layers' cache.
"""
from __future__ import annotations

from typing import Any

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Fields, Importer
from edgelin.models.importers.hf_llama import full_attention_only, llama_config, to_state

WHERE = "hf qwen2"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    full_attention_only(Fields(cfg, WHERE), WHERE)
    return llama_config(cfg, max_context, WHERE, qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False,
                        kv_heads_default=32, head_dim_default=None, max_positions_default=32768)


IMPORTER = Importer("hf-qwen2", ("qwen2",), to_config, to_state)
