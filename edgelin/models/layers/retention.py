"""Retention (RetNet, Sun et al. 2023): linear attention with a fixed per-head decay."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgelin.kernels.dispatch import chunk_simple_gla
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, split_heads
from edgelin.models.layers.norm import GatedRMSNorm


@dataclass
class RetentionOptions:
    expand_k: float = 1.0
    expand_v: float = 2.0
    norm_eps: float = 1e-5


class Retention(TokenMixer):
    """S_t = gamma_h S_{t-1} + k_t^T v_t with gamma_h = 1 - 2^(-5-h): a constant, folded into the graph."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(RetentionOptions, config, "retention")
        d, self.heads = config.d_model, config.n_heads
        self.key_dim, self.value_dim = int(d * o.expand_k), int(d * o.expand_v)
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.value_dim // self.heads, o.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        log_decay = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(self.heads, dtype=torch.float)))
        self.register_buffer("log_decay", log_decay, persistent=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"recurrent_state": (batch, self.heads, self.key_dim // self.heads, self.value_dim // self.heads)}

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.o_norm(o, split_heads(self.g_proj(x), self.heads)).flatten(-2))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = self._project(x)
        g = self.log_decay.expand(x.shape[0], x.shape[1], self.heads)
        o, S = chunk_simple_gla(q, k, v, g, initial_state=state["recurrent_state"], output_final_state=True)
        return self._output(o.to(x.dtype), x), {"recurrent_state": S}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = (t[:, 0] for t in self._project(x))
        S = state["recurrent_state"] * self.log_decay.exp()[:, None, None] + k[..., :, None] * v[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", q * q.shape[-1] ** -0.5, S)
        return self._output(o[:, None], x), {"recurrent_state": S}
