"""Gated short convolution (LFM2-style): y = C * conv(B * x), an input- and output-gated depthwise conv."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer
from edgelin.models.layers.conv import ShortConvolution


@dataclass
class ShortConvOptions:
    kernel: int = 3
    bias: bool = False


class GatedShortConv(TokenMixer):
    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(ShortConvOptions, config, "short_conv")
        d = config.d_model
        self.in_proj = nn.Linear(d, 3 * d, bias=o.bias)
        self.conv = ShortConvolution(d, o.kernel, bias=o.bias, activation=None)
        self.out_proj = nn.Linear(d, d, bias=o.bias)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"conv_state": self.conv.state_shape(batch)}

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        b, c, h = self.in_proj(x).chunk(3, dim=-1)
        y, conv_state = self.conv(b * h, state["conv_state"])
        return self.out_proj(c * y), {"conv_state": conv_state}

    # The conv is its own recurrence: one token through the parallel form is the step.
    step = forward

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        b, c, h = self.in_proj(x).chunk(3, dim=-1)
        y, conv = self.conv.steps(b * h, state["conv_state"])
        return self.out_proj(c * y), [{"conv_state": s} for s in conv]
