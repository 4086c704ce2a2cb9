"""Hugging Face transformers Qwen3 (Qwen3ForCausalLM) -> edgelin swa blocks with full attention.

Llama's map (hf_llama.py) with Qwen3's choices: an RMSNorm over each head of q and k before the
rotary embedding (eps rms_norm_eps, swa's qk_norm), head_dim 128 unless config.json says otherwise
(it need not be hidden_size / heads), `attention_bias` on all four projections. Sliding-window
layers are refused, as for Qwen2.
"""
from __future__ import annotations

from typing import Any

from edgelin.models.config import LMConfig
from edgelin.models.importers.common import Fields, Importer
from edgelin.models.importers.hf_llama import full_attention_only, llama_config, to_state

WHERE = "hf qwen3"


def to_config(cfg: dict[str, Any], max_context: int) -> LMConfig:
    c = Fields(cfg, WHERE)
    full_attention_only(c, WHERE)
    bias = c.flag("attention_bias", False)
    return llama_config(cfg, max_context, WHERE, qkv_bias=bias, o_bias=bias, mlp_bias=False, qk_norm=True,
                        kv_heads_default=32, head_dim_default=128, max_positions_default=32768)


IMPORTER = Importer("hf-qwen3", ("qwen3",), to_config, to_state)
