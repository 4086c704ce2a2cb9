"""What every token mixer provides: a chunked parallel form, an exact step form and its state."""
from __future__ import annotations

import torch
from torch import nn

from edgelin.errors import EdgelinError

State = dict[str, torch.Tensor]


class TokenMixer(nn.Module):
    """`forward(x [B, T, D], state) -> (y, state)` is the chunked parallel form (any T);
    `step(x [B, 1, D], state) -> (y, state)` is the recurrence for one token. Both start from and
    return the same state, so they interleave freely."""

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def init_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return {kind: torch.zeros(shape, device=device) for kind, shape in self.state_shapes(batch).items()}

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError


FEATURE_MAPS = {
    "relu": torch.relu,
    "sqrelu": lambda x: torch.relu(x) ** 2,
    "swish": torch.nn.functional.silu,
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
    "elu": torch.nn.functional.elu,
    "elu_p1": lambda x: torch.nn.functional.elu(x) + 1.0,  # fla's elu_p1
    "identity": lambda x: x,
}


def feature_map(name: str | None):
    """A named elementwise map for q/k (None = identity); an unknown name is an EdgelinError."""
    if name is None:
        return None
    if name not in FEATURE_MAPS:
        raise EdgelinError(f"config: unknown feature map {name!r}; known: {', '.join(sorted(FEATURE_MAPS))}")
    return FEATURE_MAPS[name]


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over the last dim: fla's l2norm (F.normalize clamps the norm instead)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, T, H, D]"""
    return x.reshape(*x.shape[:-1], heads, -1)
