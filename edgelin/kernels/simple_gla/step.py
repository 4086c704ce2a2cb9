"""One token of linear attention with a scalar decay per head (Mamba2's SSD, retention)."""
from __future__ import annotations

import torch

from edgelin.kernels.gla.step import Handoff, gla_step, gla_steps


def simple_gla_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLA's step (q comes scaled) with the head's log-decay g [B, H] (or [H]) on every key channel."""
    return gla_step(q, k, v, g[..., None], state)


def simple_gla_steps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor,
    handoff: Handoff = lambda s: s,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K positions of `simple_gla_step` (`gla_steps`), g [B, K, H] or [H] (the same at every position)."""
    return gla_steps(q, k, v, g[..., None], state, handoff)
