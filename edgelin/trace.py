"""The step graph: (input_ids, past states) -> (logits, present states) as one flat torch module.

This is what every exporter traces. `tokens == 1` traces the recurrent step form (decode graph);
`tokens > 1` traces the chunked form over a fixed chunk (prefill graph). Both take and return the
same states, named as ONNX Runtime GenAI names them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgelin.models.lm import LM


@dataclass(frozen=True)
class StateEntry:
    layer: int
    kind: str
    shape: tuple[int, ...]  # without the batch dimension

    @property
    def input(self) -> str:
        return f"past_key_values.{self.layer}.{self.kind}"

    @property
    def output(self) -> str:
        return f"present.{self.layer}.{self.kind}"

    def to_manifest(self) -> dict:
        return {"input": self.input, "output": self.output, "layer": self.layer, "kind": self.kind,
                "shape": ["batch", *self.shape], "dtype": "float32"}


def state_entries(model: LM) -> list[StateEntry]:
    return [StateEntry(i, kind, shape[1:]) for i, shapes in enumerate(model.state_shapes(1)) for kind, shape in shapes.items()]


class StepGraph(nn.Module):
    """Flat-signature wrapper: forward(input_ids, *states) -> (logits, *states), states in `entries` order."""

    def __init__(self, model: LM, tokens: int):
        super().__init__()
        self.model, self.tokens = model, tokens
        self.entries = state_entries(model)

    def forward(self, input_ids: torch.Tensor, *flat_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state: list[dict[str, torch.Tensor]] = [{} for _ in self.model.blocks]
        for entry, tensor in zip(self.entries, flat_state):
            state[entry.layer][entry.kind] = tensor
        run = self.model.step if self.tokens == 1 else self.model
        logits, new_state = run(input_ids, state)
        return (logits, *(new_state[e.layer][e.kind] for e in self.entries))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        ids = torch.zeros(batch, self.tokens, dtype=torch.long)
        return (ids, *(torch.zeros(batch, *e.shape) for e in self.entries))

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", *(e.input for e in self.entries)]

    @property
    def output_names(self) -> list[str]:
        return ["logits", *(e.output for e in self.entries)]
