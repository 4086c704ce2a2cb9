"""Mamba (v1, Gu & Dao 2023) selective scan: a diagonal decay per channel and state entry.

    h_t = exp(A dt_t) * h_{t-1} + (dt_t x_t) B_t^T      h: [B, d_inner, d_state], A: [d_inner, d_state]
    y_t = h_t C_t + D x_t;  out = out_proj(y * silu(z))

Each inner channel is a head of GLA with key = state entry and value dim 1 (q = C, k = B,
v = dt x, log decay = A dt), so the chunked form is kernels' chunk_gla: exact, memory
O(T * chunk * d_inner * d_state).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_gla
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, handoff
from edgelin.models.layers.conv import ShortConvolution


@dataclass
class MambaOptions:
    expand: int = 2
    state_size: int = 16
    conv_kernel: int = 4
    conv_bias: bool = True
    proj_bias: bool = False
    dt_rank: int = 0  # 0 = ceil(d_model / 16)


class Mamba(TokenMixer):
    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(MambaOptions, config, "mamba")
        d = config.d_model
        self.inner, self.state_size = o.expand * d, o.state_size
        self.dt_rank = o.dt_rank or math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * self.inner, bias=o.proj_bias)
        self.conv = ShortConvolution(self.inner, o.conv_kernel, bias=o.conv_bias)
        self.x_proj = nn.Linear(self.inner, self.dt_rank + 2 * o.state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.inner, bias=True)
        self.A_log = nn.Parameter(torch.arange(1, o.state_size + 1, dtype=torch.float).log().repeat(self.inner, 1))
        self.D = nn.Parameter(torch.ones(self.inner))
        self.out_proj = nn.Linear(self.inner, d, bias=o.proj_bias)
        with torch.no_grad():  # dt in [1e-3, 1e-1] through the inverse softplus, as Mamba initialises it
            dt = torch.exp(torch.rand(self.inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"recurrent_state": (batch, self.inner, self.state_size), "conv_state": self.conv.state_shape(batch)}

    def _project(self, x: torch.Tensor, state: State, steps: bool = False) -> tuple:
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv_state = (self.conv.steps if steps else self.conv)(xs, state["conv_state"])  # steps: one per position
        dt, b, c = self.x_proj(xs).split([self.dt_rank, self.state_size, self.state_size], -1)
        dt = F.softplus(self.dt_proj(dt))  # [B, T, inner]
        g = -self.A_log.float().exp() * dt[..., None]  # log decay [B, T, inner, state]
        return xs, z, dt, b, c, g, conv_state

    def _output(self, y: torch.Tensor, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj((y + xs * self.D) * F.silu(z))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        xs, z, dt, b, c, g, conv_state = self._project(x, state)
        shape = g.shape  # [B, T, inner, state]
        y, S = chunk_gla(
            c[:, :, None].expand(shape), b[:, :, None].expand(shape), (xs * dt)[..., None], g,
            scale=1.0, initial_state=state["recurrent_state"][..., None], output_final_state=True,
        )
        return self._output(y[..., 0].to(x.dtype), xs, z), {"recurrent_state": S[..., 0], "conv_state": conv_state}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        xs, z, dt, b, c, g, conv_state = self._project(x, state)
        S = state["recurrent_state"] * g[:, 0].exp() + (xs[:, 0] * dt[:, 0])[..., None] * b[:, 0, None, :]
        y = (S * c[:, 0, None, :]).sum(-1)
        return self._output(y[:, None], xs, z), {"recurrent_state": S, "conv_state": conv_state}

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        xs, z, dt, b, c, g, conv = self._project(x, state, steps=True)
        # the step's arithmetic per position; decays and inputs of every position computed at once
        decay, inp, c = g.exp(), (xs * dt)[..., None] * b[:, :, None, :], c[:, :, None, :]
        S, ys, states = state["recurrent_state"], [], []
        for t in range(x.shape[1]):
            S = S * decay[:, t] + inp[:, t]
            ys.append((S * c[:, t]).sum(-1)[:, None])
            S = handoff(S)
            states.append({"recurrent_state": S, "conv_state": conv[t]})
        return self._output(torch.cat(ys, 1), xs, z), states
