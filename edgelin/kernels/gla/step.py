"""One token of gated linear attention: the recurrence shared by the naive reference and the layers' step."""
from __future__ import annotations

from typing import Callable

import torch

Handoff = Callable[[torch.Tensor], torch.Tensor]


def gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S = diag(exp(g)) state + k^T v, o = q S, for q, k, g [B, H, K], v [B, H, V], state [B, H, K, V].

    q comes scaled: Mamba2 reads out unscaled, and a Mul by 1 would stay in its exported graph.
    """
    state = state * g.exp()[..., None] + k[..., :, None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def gla_steps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor,
    handoff: Handoff = lambda s: s,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K positions of `gla_step`, one after another (the verify graph): q, k [B, K, H, Dk], v [B, K, H, Dv],
    g [B, K, H, Dk] (or without the K axis: one decay for every position) -> o [B, K, H, Dv] and the
    state after each position.

    Each position is gla_step's arithmetic, element for element: the decays of every position are
    computed at once (elementwise, so the same values), and the read-out q S is a
    MatMul, which ONNX Runtime computes as it computes gla_step's Einsum, in a third of the time. The
    state each position passes on goes through `handoff` (`models.layers.base.handoff`).
    """
    decay = g.exp()[..., None]
    per_position = g.dim() == q.dim()
    q, k, v = q[..., None, :], k[..., :, None], v[..., None, :]  # [B, K, H, 1, Dk], [B, K, H, Dk, 1], [B, K, H, 1, Dv]
    outs, states = [], []
    for t in range(q.shape[1]):
        state = state * (decay[:, t] if per_position else decay) + k[:, t] * v[:, t]
        outs.append(q[:, t] @ state)  # [B, H, 1, Dv]
        state = handoff(state)
        states.append(state)
    return torch.cat(outs, 2).transpose(1, 2), states
