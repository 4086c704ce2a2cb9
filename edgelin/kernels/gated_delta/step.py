"""One token of the (gated) delta rule: the recurrence shared by the naive reference and the layers' step."""
from __future__ import annotations

import torch

from edgelin.kernels.gla.step import Handoff


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


def gated_delta_rule_steps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, beta: torch.Tensor,
    state: torch.Tensor, handoff: Handoff = lambda s: s,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K positions of `gated_delta_rule_step` (g [B, K, H]) or, with g None, of `delta_rule_step`, one
    after another (the verify graph): q, k [B, K, H, Dk], v [B, K, H, Dv], beta [B, K, H] -> o
    [B, K, H, Dv] and the state after each position. The steps' arithmetic element for element (the
    decays of every position at once; the products with the state as MatMuls, which ONNX Runtime
    computes as the steps' Einsums); the state each position passes on goes through `handoff`."""
    decay = g.exp()[..., None, None] if g is not None else None  # [B, K, H, 1, 1]
    beta = beta[..., None]  # [B, K, H, 1]
    qr, kr, kc = q[..., None, :], k[..., None, :], k[..., :, None]  # rows [B, K, H, 1, Dk], column [B, K, H, Dk, 1]
    outs, states = [], []
    for t in range(q.shape[1]):
        if decay is not None:
            state = state * decay[:, t]
        u = beta[:, t] * (v[:, t] - (kr[:, t] @ state)[..., 0, :])
        state = state + kc[:, t] * u[..., None, :]
        outs.append(qr[:, t] @ state)  # [B, H, 1, Dv]
        state = handoff(state)
        states.append(state)
    return torch.cat(outs, 2).transpose(1, 2), states
