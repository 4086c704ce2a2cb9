"""RMSNorm and its gated forms (fla's swish-gated output norm, Mamba2's norm-after-gate); LayerNorm (GPT-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.models.layers.base import split_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in float32 so an INT16 or fp16 input cannot overflow the sum of squares.
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim: torch's LayerNorm, written out in
    float32 like RMSNorm (no smoothing site: `declared_norms` takes RMSNorm scales only)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xc = xf - xf.mean(-1, keepdim=True)
        return (xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight + self.bias


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """LMConfig.norm: "rms" or "layer"."""
    return LayerNorm(dim, eps) if kind == "layer" else RMSNorm(dim, eps)


class GatedRMSNorm(RMSNorm):
    """norm(x) * weight * silu(gate): the output norm of GLA, Gated DeltaNet and retention.

    `activation="sigmoid"` gives norm(x) * weight * sigmoid(gate) (fla's output_gate_activation)."""

    def __init__(self, dim: int, eps: float = 1e-5, activation: str = "swish"):
        super().__init__(dim, eps)
        if activation not in ("swish", "silu", "sigmoid"):
            raise ValueError(f"gated norm activation must be swish, silu or sigmoid, got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        """gate None: the plain norm (a layer without an output gate)."""
        if gate is None:
            return super().forward(x)
        act = torch.sigmoid(gate) if self.activation == "sigmoid" else F.silu(gate)
        return super().forward(x) * act


def gated_output(
    o: torch.Tensor, x: torch.Tensor, heads: int, g_proj: nn.Linear | None, o_norm: GatedRMSNorm, o_proj: nn.Linear
) -> torch.Tensor:
    """The heads' output o [B, T, H, V] through o_norm, gated by g_proj(x) per head (no gate if None), then o_proj."""
    gate = split_heads(g_proj(x), heads) if g_proj is not None else None
    return o_proj(o_norm(o, gate).flatten(-2))


class GroupRMSNormAfterGate(nn.Module):
    """Mamba2: norm(x * silu(gate)) over groups of `group_size` channels, then weight."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = (x * F.silu(gate)).float()
        xg = x.reshape(*x.shape[:-1], -1, self.group_size)
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return xg.reshape(x.shape) * self.weight
