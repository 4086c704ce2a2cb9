"""The step graph: (input_ids, past states) -> (logits, present states) as one flat torch module.

This is what every exporter traces. `tokens == 1` traces the recurrent step form (decode graph);
`tokens > 1` traces the chunked form over a fixed chunk (prefill graph). Both take and return the
same states, named as ONNX Runtime GenAI names them. `verify` traces `tokens` steps of the step form
(`LM.steps`, the verify graph): the state after each position t as an output `present.*.{t}`, which
the exporter stacks into one output per state (`exporters/onnx.py`, `stack_handoffs`). With `block_outputs`, the tensor that leaves
each block is an extra output `hidden.<layer>`; the exporter records those tensors as sites and then
drops the extra outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgelin.models.lm import LM, POSITION
from edgelin.runtime.package import position_output


@dataclass(frozen=True)
class StateEntry:
    layer: int
    kind: str
    shape: tuple[int, ...]  # without the batch dimension
    policy: str = "int"  # "int": a quantized package may store it as integers; "float": always float

    @property
    def input(self) -> str:
        return f"past_key_values.{self.layer}.{self.kind}"

    @property
    def output(self) -> str:
        return f"present.{self.layer}.{self.kind}"

    def to_manifest(self) -> dict:
        return {"input": self.input, "output": self.output, "layer": self.layer, "kind": self.kind,
                "shape": ["batch", *self.shape], "dtype": "float32", "policy": self.policy}


def state_entries(model: LM) -> list[StateEntry]:
    """Every state of `model`; a mixer names the kinds that must stay float in `float_state_kinds`. The
    model's own `position` counter (learned positions, layer 0) is always float: an integer grid would
    have to span every position and round them."""
    def policy(block: nn.Module, kind: str) -> str:
        return "float" if kind == POSITION or kind in getattr(block.mixer, "float_state_kinds", ()) else "int"

    return [StateEntry(i, kind, shape[1:], policy(block, kind))
            for i, (block, shapes) in enumerate(zip(model.blocks, model.state_shapes(1))) for kind, shape in shapes.items()]


def hidden_name(layer: int) -> str:
    return f"hidden.{layer}"


class StepGraph(nn.Module):
    """Flat-signature wrapper: forward(input_ids, *states) -> (logits, *states), states in `entries` order."""

    def __init__(self, model: LM, tokens: int, block_outputs: bool = False, verify: bool = False):
        super().__init__()
        self.model, self.tokens, self.block_outputs, self.verify = model, tokens, block_outputs, verify
        self.entries = state_entries(model)

    def forward(self, input_ids: torch.Tensor, *flat_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state: list[dict[str, torch.Tensor]] = [{} for _ in self.model.blocks]
        for entry, tensor in zip(self.entries, flat_state):
            state[entry.layer][entry.kind] = tensor
        run = self.model.steps if self.verify else self.model.step if self.tokens == 1 else self.model
        hidden: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: hidden.append(out[0])) for b in self.model.blocks] \
            if self.block_outputs else []
        try:
            logits, new_state = run(input_ids, state)
        finally:
            for h in hooks:
                h.remove()
        if self.verify:  # new_state: one state per position
            return (logits, *(new_state[t][e.layer][e.kind] for t in range(self.tokens) for e in self.entries), *hidden)
        return (logits, *(new_state[e.layer][e.kind] for e in self.entries), *hidden)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        ids = torch.zeros(batch, self.tokens, dtype=torch.long)
        return (ids, *(torch.zeros(batch, *e.shape) for e in self.entries))

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", *(e.input for e in self.entries)]

    @property
    def output_names(self) -> list[str]:
        hidden = [hidden_name(i) for i in range(len(self.model.blocks))] if self.block_outputs else []
        if self.verify:
            return ["logits", *(position_output(e.output, t) for t in range(self.tokens) for e in self.entries), *hidden]
        return ["logits", *(e.output for e in self.entries), *hidden]
