"""Gated DeltaNet (Yang et al. 2025): delta-rule state update with a scalar per-head decay."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_gated_delta_rule
from edgelin.kernels.gated_delta.step import gated_delta_rule_step, gated_delta_rule_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, handoff, l2norm, split_heads
from edgelin.models.layers.conv import ShortConvolution
from edgelin.models.layers.norm import GatedRMSNorm, gated_output


@dataclass
class GatedDeltaOptions:
    head_dim: int = 0  # 0 = d_model // n_heads
    heads: int = 0  # 0 = n_heads; set when the head count does not divide d_model (head_dim given)
    expand_v: float = 1.0
    use_short_conv: bool = True
    conv_size: int = 4
    norm_eps: float = 1e-5
    conv_bias: bool = False
    use_gate: bool = True  # False: o_norm without an output gate
    gate_activation: str = "swish"  # or "sigmoid" (fla's output_gate_activation)
    allow_neg_eigval: bool = False  # beta in (0, 2) instead of (0, 1)
    l2norm_eps_inside: bool = False  # q, k / sqrt(|x|^2 + 1e-6) as fla's kernels, instead of / max(|x|, 1e-6)


class GatedDelta(TokenMixer):
    """S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, a_t = exp(-exp(A_log) softplus(a_proj x + dt_bias))."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(GatedDeltaOptions, config, "gated_delta")
        d, self.heads = config.d_model, o.heads or config.n_heads
        self.head_k = o.head_dim or d // self.heads
        self.head_v = int(self.head_k * o.expand_v)
        self.key_dim, self.value_dim = self.heads * self.head_k, self.heads * self.head_v
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.a_proj = nn.Linear(d, self.heads, bias=False)
        self.b_proj = nn.Linear(d, self.heads, bias=False)
        # Mamba-style init: A in [1, 16], dt in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.empty(self.heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(self.heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, o.conv_size, bias=o.conv_bias) if o.use_short_conv else None
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if o.use_gate else None
        self.o_norm = GatedRMSNorm(self.head_v, o.norm_eps, o.gate_activation)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {"recurrent_state": (batch, self.heads, self.head_k, self.head_v)}
        if self.conv is not None:
            shapes["conv_state"] = self.conv.state_shape(batch)
        return shapes

    def _project(self, x: torch.Tensor, state: State, steps: bool = False) -> tuple:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new_state = {}
        if self.conv is not None:
            conv = self.conv.steps if steps else self.conv  # steps: a conv state per position
            qkv, new_state["conv_state"] = conv(torch.cat([q, k, v], -1), state["conv_state"])
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], -1)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k = split_heads(q, self.heads), split_heads(k, self.heads)
        if self.options.l2norm_eps_inside:
            q, k = l2norm(q), l2norm(k)
        else:
            q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)  # [B, T, H]
        beta = torch.sigmoid(self.b_proj(x))
        if self.options.allow_neg_eigval:
            beta = beta * 2.0
        return q, k, split_heads(v, self.heads), g, beta, new_state

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g, beta, new_state = self._project(x, state)
        o, new_state["recurrent_state"] = chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=state["recurrent_state"], output_final_state=True
        )
        return gated_output(o.to(x.dtype), x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g, beta, new_state = self._project(x, state)
        q, k, v, g, beta = q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0]
        o, new_state["recurrent_state"] = gated_delta_rule_step(
            q * self.head_k**-0.5, k, v, g, beta, state["recurrent_state"]
        )
        return gated_output(o[:, None], x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        q, k, v, g, beta, conv = self._project(x, state, steps=True)
        o, S = gated_delta_rule_steps(q * self.head_k**-0.5, k, v, g, beta, state["recurrent_state"], handoff)
        states = [{"recurrent_state": s, **{kind: c[t] for kind, c in conv.items()}} for t, s in enumerate(S)]
        return gated_output(o, x, self.heads, self.g_proj, self.o_norm, self.o_proj), states
