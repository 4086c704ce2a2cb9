"""What every token mixer provides: a chunked parallel form, an exact step form and its state."""
from __future__ import annotations

import torch
from torch import nn

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


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, T, H, D]"""
    return x.reshape(*x.shape[:-1], heads, -1)
