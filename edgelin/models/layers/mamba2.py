"""Mamba2 selective state space (SSD, Dao & Gu 2024): scalar per-head decay exp(A dt), grouped B/C."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_simple_gla
from edgelin.kernels.simple_gla.step import simple_gla_step, simple_gla_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, handoff
from edgelin.models.layers.conv import ShortConvolution
from edgelin.models.layers.norm import GroupRMSNormAfterGate


@dataclass
class Mamba2Options:
    expand: int = 2
    head_dim: int = 64
    state_size: int = 64
    n_groups: int = 1
    conv_kernel: int = 4
    conv_bias: bool = True
    proj_bias: bool = False
    norm_eps: float = 1e-5
    dt_min: float = 0.0  # dt clamped to [dt_min, dt_max] after softplus (HF's time_step_limit)
    dt_max: float | None = None  # None = no upper bound


class Mamba2(TokenMixer):
    """h_t = exp(A dt_t) h_{t-1} + dt_t B_t x_t^T; y_t = C_t h_t + D x_t; out = norm(y * silu(z))."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(Mamba2Options, config, "mamba2")
        d = config.d_model
        self.inner = o.expand * d
        if self.inner % o.head_dim:
            raise ValueError(f"mamba2: expand*d_model {self.inner} is not divisible by head_dim {o.head_dim}")
        self.heads = self.inner // o.head_dim
        if self.heads % o.n_groups:
            raise ValueError(f"mamba2: {self.heads} heads do not split into n_groups {o.n_groups}")
        self.conv_dim = self.inner + 2 * o.n_groups * o.state_size
        self.in_proj = nn.Linear(d, self.inner + self.conv_dim + self.heads, bias=o.proj_bias)
        self.conv = ShortConvolution(self.conv_dim, o.conv_kernel, bias=o.conv_bias)
        dt = torch.exp(torch.rand(self.heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.arange(1, self.heads + 1, dtype=torch.float).log())
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = GroupRMSNormAfterGate(self.inner, self.inner // o.n_groups, o.norm_eps)
        self.out_proj = nn.Linear(self.inner, d, bias=o.proj_bias)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        o = self.options
        return {"recurrent_state": (batch, self.heads, o.state_size, o.head_dim), "conv_state": self.conv.state_shape(batch)}

    def _project(self, x: torch.Tensor, state: State, steps: bool = False) -> tuple:
        o = self.options
        z, xbc, dt = self.in_proj(x).split([self.inner, self.conv_dim, self.heads], -1)
        xbc, conv_state = (self.conv.steps if steps else self.conv)(xbc, state["conv_state"])  # steps: one per position
        xs, b, c = xbc.split([self.inner, o.n_groups * o.state_size, o.n_groups * o.state_size], -1)
        B, T = x.shape[:2]
        xs = xs.reshape(B, T, self.heads, o.head_dim)
        rep = self.heads // o.n_groups
        b = b.reshape(B, T, o.n_groups, o.state_size).repeat_interleave(rep, 2)
        c = c.reshape(B, T, o.n_groups, o.state_size).repeat_interleave(rep, 2)
        dt = F.softplus(dt + self.dt_bias)  # [B, T, H]
        if o.dt_min > 0 or o.dt_max is not None:
            dt = dt.clamp(min=o.dt_min, max=o.dt_max)
        g = -self.A_log.float().exp() * dt  # log decay
        return z, xs, b, c, dt, g, conv_state

    def _output(self, y: torch.Tensor, xs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + xs * self.D[:, None]
        return self.out_proj(self.norm(y.flatten(-2), z))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        z, xs, b, c, dt, g, conv_state = self._project(x, state)
        y, S = chunk_simple_gla(c, b, xs * dt[..., None], g, scale=1.0, initial_state=state["recurrent_state"], output_final_state=True)
        return self._output(y.to(x.dtype), xs, z), {"recurrent_state": S, "conv_state": conv_state}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        z, xs, b, c, dt, g, conv_state = self._project(x, state)
        xs0, b, c, dt, g = xs[:, 0], b[:, 0], c[:, 0], dt[:, 0], g[:, 0]
        y, S = simple_gla_step(c, b, xs0 * dt[..., None], g, state["recurrent_state"])
        return self._output(y[:, None], xs, z), {"recurrent_state": S, "conv_state": conv_state}

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        z, xs, b, c, dt, g, conv = self._project(x, state, steps=True)
        y, S = simple_gla_steps(c, b, xs * dt[..., None], g, state["recurrent_state"], handoff)
        return self._output(y, xs, z), [{"recurrent_state": s, "conv_state": conv[t]} for t, s in enumerate(S)]
