"""One token of gated linear attention: the recurrence shared by the naive reference and the layers' step."""
from __future__ import annotations

import torch


def gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """S = diag(exp(g)) state + k^T v, o = q S, for q, k, g [B, H, K], v [B, H, V], state [B, H, K, V].

    q comes scaled: Mamba2 reads out unscaled, and a Mul by 1 would stay in its exported graph.
    """
    state = state * g.exp()[..., None] + k[..., :, None] * v[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state
