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

    def steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, list[State]]:
        """`step` over x [B, K, D], one position after another: y [B, K, D] and the state after each
        position (the verify graph, docs/DESIGN.md). This default calls `step` K times; a family
        overrides it to run its projections once over the K positions and only the recurrence per
        position, with the step's arithmetic, so the results stay those of K `step` calls."""
        ys, states = [], []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t:t + 1], state)
            ys.append(y)
            state = handoff(state)
            states.append(state)
        return torch.cat(ys, 1), states


def handoff(state: State | torch.Tensor) -> State | torch.Tensor:
    """The state (a State, or one of its tensors) one position of `steps` passes to the next and
    returns as that position's state.

    An identity, traced as its own node (a Cast to the same type; the exporter makes it an Identity):
    the position's read-out uses the state it computed, the next position reads this copy. That is
    where a quantized verify graph rounds the state to its integers, as the decode graph rounds the
    state it outputs before the next step reads it (docs/DESIGN.md, "The verify graph")."""
    if isinstance(state, torch.Tensor):
        return state.to(state.dtype)
    return {kind: s.to(s.dtype) for kind, s in state.items()}


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
