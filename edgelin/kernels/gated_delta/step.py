"""One token of the (gated) delta rule: the recurrence shared by the naive reference and the layers' step."""
from __future__ import annotations

import torch


def delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S = state + beta k^T (v - k state), o = q S (q comes scaled), for q, k [B, H, K], v [B, H, V], beta [B, H]."""
    u = beta[..., None] * (v - torch.einsum("bhk,bhkv->bhv", k, state))
    state = state + k[..., :, None] * u[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def gated_delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta rule step on the decayed state exp(g) state, with the head's log-decay g [B, H]."""
    return delta_rule_step(q, k, v, beta, state * g.exp()[..., None, None])
