"""Retention (RetNet, Sun et al. 2023): linear attention with a fixed per-head decay."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgelin.kernels.dispatch import chunk_simple_gla
from edgelin.kernels.simple_gla.step import simple_gla_step, simple_gla_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, TokenMixer, feature_map, handoff, split_heads
from edgelin.models.layers.norm import GatedRMSNorm, gated_output
from edgelin.models.layers.swa import rotate


@dataclass
class RetentionOptions:
    expand_k: float = 1.0
    expand_v: float = 2.0
    norm_eps: float = 1e-5
    use_output_gate: bool = True  # False: o_norm without a gate
    feature_map: str | None = None  # applied to q and k before the rotary embedding (fla's feature_map)
    rotary: bool = False  # rotary embedding of q and k (fla's MultiScaleRetention), see below
    rope_theta: float = 10000.0


def rotate_state(S: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """R(position) S for a state S [B, H, K, V], where x R(p) rotates a row vector x to position p."""
    positions = torch.full((S.shape[-1],), -position, device=S.device)
    return rotate(S.transpose(-1, -2), positions, theta).transpose(-1, -2)


class Retention(TokenMixer):
    """S_t = gamma_h S_{t-1} + k_t^T v_t with gamma_h = 1 - 2^(-5-h): a constant, folded into the graph.

    With `rotary`, q_t and k_s are rotated to their absolute positions t and s. The score depends
    on t - s only, so the state is kept in the frame of the latest token: S~_t = gamma R(1) S~_{t-1}
    + k_t^T v_t and o_t = q_t S~_t with q, k unrotated. Rotating the state by one fixed step per
    token needs no position counter, and the rotation is a graph constant.
    """

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        o = self.options = mixer_options(RetentionOptions, config, "retention")
        d, self.heads = config.d_model, config.n_heads
        self.key_dim, self.value_dim = int(d * o.expand_k), int(d * o.expand_v)
        self.q_proj = nn.Linear(d, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d, self.value_dim, bias=False)
        self.g_proj = nn.Linear(d, self.value_dim, bias=False) if o.use_output_gate else None
        self.o_norm = GatedRMSNorm(self.value_dim // self.heads, o.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d, bias=False)
        self.feature_map = feature_map(o.feature_map)
        log_decay = torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(self.heads, dtype=torch.float)))
        self.register_buffer("log_decay", log_decay, persistent=False)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"recurrent_state": (batch, self.heads, self.key_dim // self.heads, self.value_dim // self.heads)}

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        return q, k, v

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = self._project(x)
        T, theta = x.shape[1], self.options.rope_theta
        S0 = state["recurrent_state"]
        if self.options.rotary:
            # Positions 0..T-1 within the chunk; the carried state enters one step behind position 0.
            pos = torch.arange(T, device=x.device)
            q = rotate(q.transpose(1, 2), pos, theta).transpose(1, 2)
            k = rotate(k.transpose(1, 2), pos, theta).transpose(1, 2)
            S0 = rotate_state(S0, 1, theta)
        g = self.log_decay.expand(x.shape[0], T, self.heads)
        o, S = chunk_simple_gla(q, k, v, g, initial_state=S0, output_final_state=True)
        if self.options.rotary:
            S = rotate_state(S, T - 1, theta)  # back to the frame of the last token
        return gated_output(o.to(x.dtype), x, self.heads, self.g_proj, self.o_norm, self.o_proj), {"recurrent_state": S}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = (t[:, 0] for t in self._project(x))
        S = state["recurrent_state"]
        if self.options.rotary:
            S = rotate_state(S, 1, self.options.rope_theta)
        o, S = simple_gla_step(q * q.shape[-1] ** -0.5, k, v, self.log_decay, S)
        return gated_output(o[:, None], x, self.heads, self.g_proj, self.o_norm, self.o_proj), {"recurrent_state": S}

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        q, k, v = self._project(x)
        q = q * q.shape[-1] ** -0.5
        if not self.options.rotary:
            o, S = simple_gla_steps(q, k, v, self.log_decay, state["recurrent_state"], handoff)
            return gated_output(o, x, self.heads, self.g_proj, self.o_norm, self.o_proj), [{"recurrent_state": s} for s in S]
        S, outs, states = state["recurrent_state"], [], []
        for t in range(x.shape[1]):  # the state turns by one position before each step
            o, S = simple_gla_step(q[:, t], k[:, t], v[:, t], self.log_decay, rotate_state(S, 1, self.options.rope_theta))
            S = handoff(S)
            outs.append(o[:, None])
            states.append({"recurrent_state": S})
        return gated_output(torch.cat(outs, 1), x, self.heads, self.g_proj, self.o_norm, self.o_proj), states
