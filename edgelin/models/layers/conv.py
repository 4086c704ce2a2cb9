"""Depthwise causal short convolution over a carried state of the last `kernel - 1` inputs.

Written as `kernel` shifted multiply-adds instead of a Conv op: the same arithmetic in the
parallel and step forms, no padding tricks, and an integer-friendly graph on every back end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Module):
    def __init__(self, channels: int, kernel: int, *, bias: bool = False, activation: str | None = "silu"):
        super().__init__()
        if kernel < 2:
            raise ValueError(f"short convolution kernel must be >= 2, got {kernel}")
        self.channels, self.kernel, self.activation = channels, kernel, activation
        # Same layout as nn.Conv1d(groups=channels): [channels, 1, kernel], last tap = current input.
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel) / kernel**0.5)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def state_shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.channels, self.kernel - 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], state [B, C, kernel-1] -> y [B, T, C], new state."""
        T = x.shape[1]
        xs = torch.cat([state.to(x.dtype), x.transpose(1, 2)], dim=2)  # [B, C, kernel-1+T]
        w = self.weight[:, 0]  # [C, kernel]
        y = sum(xs[:, :, i : i + T] * w[:, i, None] for i in range(self.kernel))
        if self.bias is not None:
            y = y + self.bias[:, None]
        y = y.transpose(1, 2)
        if self.activation == "silu":
            y = F.silu(y)
        return y, xs[:, :, T:]
