"""Feed-forward blocks: SwiGLU (Llama, Qwen, the linear-recurrent families) and GELU (GPT-2)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation as GPT-2 writes it (transformers' gelu_new)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GeluMLP(nn.Module):
    """down(gelu(up(x))): GPT-2's MLP (c_fc, c_proj). `approximate`: "none" (erf) or "tanh"."""

    def __init__(self, d_model: int, d_ff: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.approximate = approximate
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        return self.down_proj(gelu_tanh(h) if self.approximate == "tanh" else F.gelu(h))


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool) -> nn.Module:
    """LMConfig.mlp: "swiglu", "gelu" or "gelu_tanh"."""
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias)
    return GeluMLP(d_model, d_ff, "tanh" if kind == "gelu_tanh" else "none", bias)
