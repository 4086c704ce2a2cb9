"""Linearized attention: a softmax attention layer turned into gated linear attention (LoLCATs, Liger, Lizard).

It keeps the attention layer's own q/k/v/o projections (and q/k norms, biases, grouped kv heads), so a
pretrained layer's weights load as they are, and adds only a small learned decay gate, an optional
Hedgehog feature map and per-head output norms. Two branches read the same q, k, v:

- gated linear attention over the whole past: phi(q), phi(k) (unrotated; the decay carries position)
  through the GLA recurrence. With the Hedgehog map (positive features) the branch is normalised like
  softmax attention, sum phi(q)phi(k) v / sum phi(q)phi(k): the denominator rides in the recurrence as
  one extra value column of ones. With the identity map (features of either sign) a per-head RMSNorm
  restores the scale instead;
- with `window` > 0, exact softmax attention over the last `window` tokens (rotary as in the source
  layer), as the sliding-window mixer computes it.

y = o_proj(swa + mix * gla) with a learned per-head `mix` (from 0: the student starts as the window alone),
or o_proj(gla) without a window.
The state is the GLA matrix plus, with a window, the window's keys and values: constant in length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgelin.kernels.dispatch import chunk_gla
from edgelin.kernels.gla.step import gla_step, gla_steps
from edgelin.models.config import LMConfig, mixer_options
from edgelin.models.layers.base import State, handoff
from edgelin.models.layers.norm import RMSNorm
from edgelin.models.layers.swa import SlidingWindowAttention, SWAOptions

FEATURE_MAPS = ("identity", "hedgehog")


@dataclass
class LinAttnOptions(SWAOptions):
    window: int = 0  # 0 = gated linear attention alone; > 0 adds softmax attention over the last `window` tokens
    feature_map: str = "identity"  # "hedgehog": [softmax(xW), softmax(-xW)] per head, W learned (from identity)
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    gate_init: float = 3.0  # initial gate logit: decay exp(logsigmoid(3) / 16) = 0.997 per token
    mix_init: float = 0.0  # initial weight of the linear branch beside the window


class LinearizedAttention(SlidingWindowAttention):
    float_state_kinds = ("seen",)

    def __init__(self, config: LMConfig, layer: int):
        o = mixer_options(LinAttnOptions, config, "lin_attn")
        if o.feature_map not in FEATURE_MAPS:
            raise ValueError(f"lin_attn: feature_map must be one of {', '.join(FEATURE_MAPS)}, got {o.feature_map!r}")
        super().__init__(config, layer, o)
        if o.full_attention:
            raise ValueError("lin_attn: full_attention does not apply (the window is a sliding window)")
        H, D = self.heads, self.head_dim
        self.feature_dim = 2 * D if o.feature_map == "hedgehog" else D
        self.hedgehog = nn.Parameter(torch.eye(D).repeat(H, 1, 1)) if o.feature_map == "hedgehog" else None
        self.gk_proj = nn.Sequential(nn.Linear(config.d_model, o.gate_low_rank_dim, bias=False),
                                     nn.Linear(o.gate_low_rank_dim, H * self.feature_dim))
        self.normalized = o.feature_map == "hedgehog"
        self.lin_norm = None if self.normalized else RMSNorm(D, o.norm_eps)
        self.mix = nn.Parameter(torch.full((H, 1), o.mix_init)) if o.window else None
        self.init_std = config.init_std
        self.reset_linear_branch()

    def reset_linear_branch(self) -> None:
        """The new parameters' starting point: a slow uniform decay, identity feature maps, unit norms."""
        with torch.no_grad():
            nn.init.normal_(self.gk_proj[0].weight, std=self.init_std)
            self.gk_proj[1].weight.zero_()
            self.gk_proj[1].bias.fill_(self.options.gate_init)
            if self.hedgehog is not None:
                self.hedgehog.copy_(torch.eye(self.head_dim).repeat(self.heads, 1, 1))
            if self.lin_norm is not None:
                self.lin_norm.weight.fill_(1.0)
            if self.mix is not None:
                self.mix.fill_(self.options.mix_init)

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        shapes = {"recurrent_state": (batch, self.heads, self.feature_dim, self.head_dim + self.normalized)}
        return {**super().state_shapes(batch), **shapes} if self.window else shapes

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, D] -> phi(x) [B, T, H, F]."""
        if self.hedgehog is None:
            return x
        z = torch.einsum("bthd,hde->bthe", x, self.hedgehog)
        return torch.cat([F.softmax(z, -1), F.softmax(-z, -1)], -1).to(x.dtype)  # autocast runs softmax in float32

    def _linear_inputs(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """phi(q), phi(k), v over all heads and the log decay, each [B, T, H, .]."""
        rep = self.heads // self.kv_heads
        g = -F.softplus(-self.gk_proj(x)) / self.options.gate_logit_normalizer  # logsigmoid without a Log op
        g = g.reshape(*g.shape[:-1], self.heads, self.feature_dim)
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        if self.normalized:
            v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        return self._features(q.transpose(1, 2)), self._features(k), v, g

    def _combine(self, lin: torch.Tensor, swa: torch.Tensor | None) -> torch.Tensor:
        """lin [B, T, H, D (+1: the denominator)] and the window's output [B, T, H*D] -> the layer's output."""
        if self.normalized:
            lin = lin[..., :-1] / lin[..., -1:].clamp_min(1e-6)
        else:
            lin = self.lin_norm(lin)
        if swa is not None:
            lin = swa.unflatten(-1, (self.heads, self.head_dim)) + self.mix * lin
        return self.o_proj(lin.flatten(-2))

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = self.project(x)
        swa, new_state = self.attend(q, k, v, state) if self.window else (None, {})
        fq, fk, fv, g = self._linear_inputs(x, q, k, v)
        lin, new_state["recurrent_state"] = chunk_gla(fq, fk, fv, g, initial_state=state["recurrent_state"],
                                                      output_final_state=True)
        return self._combine(lin.to(x.dtype), swa), new_state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        q, k, v = self.project(x)
        swa, new_state = self.attend(q, k, v, state) if self.window else (None, {})
        fq, fk, fv, g = (t[:, 0] for t in self._linear_inputs(x, q, k, v))
        lin, new_state["recurrent_state"] = gla_step(fq * fq.shape[-1] ** -0.5, fk, fv, g, state["recurrent_state"])
        return self._combine(lin[:, None], swa), new_state

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        """The projections and features over the K positions at once; the window and the GLA recurrence
        one position at a time, with the step's arithmetic (the verify graph)."""
        q, k, v = self.project(x)
        K = x.shape[1]
        windows, swa_states = [], [{} for _ in range(K)]
        if self.window:
            window_state = {kind: state[kind] for kind in ("key", "value", "seen")}
            for t in range(K):
                o, window_state = self.attend(q[:, :, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], window_state)
                window_state = handoff(window_state)
                windows.append(o)
                swa_states[t] = window_state
        fq, fk, fv, g = self._linear_inputs(x, q, k, v)
        lin, S = gla_steps(fq * fq.shape[-1] ** -0.5, fk, fv, g, state["recurrent_state"], handoff)
        states = [{**swa_states[t], "recurrent_state": s} for t, s in enumerate(S)]
        return self._combine(lin, torch.cat(windows, 1) if windows else None), states
