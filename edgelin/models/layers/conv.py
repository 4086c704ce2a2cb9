"""Depthwise causal short convolution over a carried state of the last `kernel - 1` inputs.

Written as shifted multiply-adds instead of a Conv op: the same arithmetic in the parallel and
step forms, no padding tricks, and an integer-friendly graph on every back end. The state is
channel-last [B, kernel-1, C], like the input, so no form needs a transpose; one step is one
Mul by the [kernel, C] taps and one ReduceSum over them.
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
        return (batch, self.kernel - 1, self.channels)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], state [B, kernel-1, C] -> y [B, T, C], new state [B, kernel-1, C]."""
        if state.dtype != x.dtype:  # a no-op .to() would still trace as a Cast
            state = state.to(x.dtype)
        xs = torch.cat([state, x], dim=1)  # [B, kernel-1+T, C]
        w = self.weight[:, 0].t()  # [kernel, C]; constant-folded in the exported graph
        if x.shape[1] == 1:
            # the new state by a constant Split, not a Slice: OpenVINO runs Slice on a reference kernel
            y, new_state = (xs * w).sum(1, keepdim=True), xs.split([1, self.kernel - 1], dim=1)[1]
        else:
            T = x.shape[1]
            y, new_state = sum(xs[:, i : i + T] * w[i] for i in range(self.kernel)), xs[:, T:]
        return self._finish(y), new_state

    def steps(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, K, C] as K single steps: y [B, K, C] and the state after each position (K tensors
        [B, kernel-1, C]). Each position's window is the decode step's (the state the previous
        position handed off, `base.handoff`, then its input); the windows of all positions go through
        one Mul by the taps and one ReduceSum, which sum each window as the step does (same values),
        so the results equal K calls with one token each."""
        if state.dtype != x.dtype:
            state = state.to(x.dtype)
        w = self.weight[:, 0].t()
        windows, states = [], []
        for xt in x.split(1, dim=1):
            windows.append(torch.cat([state, xt], dim=1))  # [B, kernel, C]
            state = windows[-1][:, 1:].to(x.dtype)  # handed off (base.handoff)
            states.append(state)
        return self._finish((torch.stack(windows, 1) * w).sum(2)), states

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        if self.activation == "silu":
            y = F.silu(y)
        return y
