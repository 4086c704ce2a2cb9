"""DeltaNet (Schlag et al. 2021; Yang et al. 2024): the un-gated delta rule, gated delta with g = 0.

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),   o_t = scale * q_t S_t
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_gated_delta_rule
from edgelin.kernels.gated_delta.step import delta_rule_step, gated_delta_rule_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, feature_map, handoff, l2norm, split_heads
from edgelin.models.layers.conv import ShortConvolution
from edgelin.models.layers.norm import GatedRMSNorm, gated_output


@dataclass
class DeltaNetOptions:
    expand_k: float = 1.0
    expand_v: float = 1.0
    use_beta: bool = True  # False: beta = 1
    use_gate: bool = False  # True: o_norm gated by silu(g_proj x)
    use_short_conv: bool = True
    conv_size: int = 4
    conv_bias: bool = False
    allow_neg_eigval: bool = False  # beta in (0, 2)
    qk_activation: str = "silu"  # silu | relu | elu (fla's elu + 1) | identity
    qk_norm: str = "l2"  # l2 | sum
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.qk_activation not in ("silu", "relu", "elu", "identity"):
            raise ValueError(f"delta_net: qk_activation must be silu, relu, elu or identity, got {self.qk_activation!r}")
        if self.qk_norm not in ("l2", "sum"):
            raise ValueError(f"delta_net: qk_norm must be l2 or sum, got {self.qk_norm!r}")


class DeltaNet(TokenMixer):
    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(DeltaNetOptions, config, "delta_net")
        d, self.heads = config.d_model, config.n_heads
        self.key_dim, self.value_dim = int(d * o.expand_k), int(d * o.expand_v)
        self.head_k, self.head_v = self.key_dim // self.heads, self.value_dim // self.heads
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.b_proj = nn.Linear(d, self.heads, bias=False) if o.use_beta else None
        # No activation inside: silu goes on v always and on q, k only when qk_activation is silu.
        self.conv = ShortConvolution(2 * self.key_dim + self.value_dim, o.conv_size, bias=o.conv_bias, activation=None) if o.use_short_conv else None
        self.qk_map = None if o.qk_activation == "silu" else feature_map("elu_p1" if o.qk_activation == "elu" else o.qk_activation)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if o.use_gate else None
        self.o_norm = GatedRMSNorm(self.head_v, o.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {"recurrent_state": (batch, self.heads, self.head_k, self.head_v)}
        if self.conv is not None:
            shapes["conv_state"] = self.conv.state_shape(batch)
        return shapes

    def _project(self, x: torch.Tensor, state: State, steps: bool = False) -> tuple:
        o = self.options
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        new_state = {}
        if self.conv is not None:
            conv = self.conv.steps if steps else self.conv  # steps: a conv state per position
            qkv, new_state["conv_state"] = conv(torch.cat([q, k, v], -1), state["conv_state"])
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], -1)
        if o.qk_activation == "silu":
            q, k = F.silu(q), F.silu(k)
        v = F.silu(v)
        q, k, v = split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)
        if self.qk_map is not None:
            q, k = self.qk_map(q), self.qk_map(k)
        if o.qk_norm == "l2":
            q, k = l2norm(q), l2norm(k)  # as fla's kernels: x / sqrt(|x|^2 + 1e-6)
        else:
            q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
        beta = torch.sigmoid(self.b_proj(x)) if self.b_proj is not None else x.new_ones(*x.shape[:2], self.heads)
        if o.allow_neg_eigval:
            beta = beta * 2.0
        return q, k, v, beta, new_state

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, beta, new_state = self._project(x, state)
        g = torch.zeros_like(beta)
        o, new_state["recurrent_state"] = chunk_gated_delta_rule(
            q, k, v, g, beta, initial_state=state["recurrent_state"], output_final_state=True
        )
        return gated_output(o.to(x.dtype), x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v, beta, new_state = self._project(x, state)
        q, k, v, beta = q[:, 0], k[:, 0], v[:, 0], beta[:, 0]
        o, new_state["recurrent_state"] = delta_rule_step(q * self.head_k**-0.5, k, v, beta, state["recurrent_state"])
        return gated_output(o[:, None], x, self.heads, self.g_proj, self.o_norm, self.o_proj), new_state

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        q, k, v, beta, conv = self._project(x, state, steps=True)
        o, S = gated_delta_rule_steps(q * self.head_k**-0.5, k, v, None, beta, state["recurrent_state"], handoff)
        states = [{"recurrent_state": s, **{kind: c[t] for kind, c in conv.items()}} for t, s in enumerate(S)]
        return gated_output(o, x, self.heads, self.g_proj, self.o_norm, self.o_proj), states
