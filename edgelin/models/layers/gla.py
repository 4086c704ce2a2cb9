"""Gated linear attention (GLA, Yang et al. 2024): per-channel data-dependent decay from a low-rank gate."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_gla
from edgelin.kernels.gla.step import gla_step, gla_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, feature_map, handoff, split_heads
from edgelin.models.layers.conv import ShortConvolution
from edgelin.models.layers.norm import GatedRMSNorm, gated_output


@dataclass
class GLAOptions:
    expand_k: float = 0.5
    expand_v: float = 1.0
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    use_short_conv: bool = False
    conv_size: int = 4
    use_output_gate: bool = True  # False: o_norm without a gate (plain RMSNorm)
    norm_eps: float = 1e-5
    conv_bias: bool = False
    clamp_min: float | None = None  # lower bound on the log decay (fla's clamp_min)
    feature_map: str | None = None  # applied to q and k after the gate (fla's feature_map)


class GLA(TokenMixer):
    """S_t = diag(a_t) S_{t-1} + k_t^T v_t with a_t = sigmoid(gk_t)^(1/normalizer) per key channel."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(GLAOptions, config, "gla")
        d, self.heads = config.d_model, config.n_heads
        self.key_dim, self.value_dim = int(d * o.expand_k), int(d * o.expand_v)
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d, o.gate_low_rank_dim, bias=False), nn.Linear(o.gate_low_rank_dim, self.key_dim))
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, o.conv_size, bias=o.conv_bias) if o.use_short_conv else None
        self.feature_map = feature_map(o.feature_map)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if o.use_output_gate else None
        self.o_norm = GatedRMSNorm(self.value_dim // self.heads, o.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {"recurrent_state": (batch, self.heads, self.key_dim // self.heads, self.value_dim // self.heads)}
        if self.conv is not None:
            shapes["conv_state"] = self.conv.state_shape(batch)
        return shapes

    def _project(self, x: torch.Tensor, state: State, steps: bool = False) -> tuple[torch.Tensor, ...]:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new_state = {}
        if self.conv is not None:
            conv = self.conv.steps if steps else self.conv  # steps: a conv state per position
            qkv, new_state["conv_state"] = conv(torch.cat([q, k, v], -1), state["conv_state"])
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], -1)
        # log decay = logsigmoid(z) / normalizer, always <= 0; -softplus(-z) is logsigmoid without a Log op.
        g = -F.softplus(-self.gk_proj(x)) / self.options.gate_logit_normalizer
        if self.options.clamp_min is not None:
            g = g.clamp_min(self.options.clamp_min)
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads), split_heads(g, self.heads), new_state

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g, new_state = self._project(x, state)
        o, new_state["recurrent_state"] = chunk_gla(q, k, v, g, initial_state=state["recurrent_state"], output_final_state=True)
        return gated_output(o.to(x.dtype), x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, g, new_state = self._project(x, state)
        q, k, v, g = q[:, 0], k[:, 0], v[:, 0], g[:, 0]  # [B, H, D]
        o, new_state["recurrent_state"] = gla_step(q * q.shape[-1] ** -0.5, k, v, g, state["recurrent_state"])
        return gated_output(o[:, None], x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        q, k, v, g, conv = self._project(x, state, steps=True)
        o, S = gla_steps(q * q.shape[-1] ** -0.5, k, v, g, state["recurrent_state"], handoff)
        states = [{"recurrent_state": s, **{kind: c[t] for kind, c in conv.items()}} for t, s in enumerate(S)]
        return gated_output(o, x, self.heads, self.g_proj, self.o_norm, self.o_proj), states
