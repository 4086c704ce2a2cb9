"""CalibrationTable: the observed range of every tensor that will be quantized, per graph, as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edgelin.calibration.observers import METHODS
from edgelin.errors import EdgelinError

VERSION = 1
ROLES = ("matmul_input", "state_in", "state_out", "gate", "output")


@dataclass
class CalibrationTable:
    """graph name -> tensor name -> {"role", "min", "max", "count", "ranges": {method: [lo, hi]},
    "channel_absmax": [...] (matmul inputs only)}; `meta` records the text, streams and options."""

    graphs: dict[str, dict[str, dict[str, Any]]]
    meta: dict[str, Any] = field(default_factory=dict)

    def range(self, graph: str, tensor: str, method: str = "minmax") -> tuple[float, float]:
        if method not in METHODS:
            raise EdgelinError(f"unknown observer {method!r}; choose from {', '.join(METHODS)}")
        try:
            lo, hi = self.graphs[graph][tensor]["ranges"][method]
        except KeyError:
            raise EdgelinError(f"the calibration table has no range for {tensor} in graph {graph!r}") from None
        return float(lo), float(hi)

    def state_absmax(self, state_input: str, state_output: str) -> float:
        """Largest |value| a state took anywhere: both graphs, as input and as output (states never clip)."""
        vals = [max(-t["min"], t["max"]) for g in self.graphs.values() for name, t in g.items()
                if name in (state_input, state_output)]
        if not vals:
            raise EdgelinError(f"the calibration table has no range for state {state_input}")
        return float(max(vals))

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "meta": self.meta, "graphs": self.graphs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalibrationTable":
        if not isinstance(d, dict) or d.get("version") != VERSION or not isinstance(d.get("graphs"), dict):
            raise EdgelinError(f"not an edgelin calibration table (version {VERSION})")
        return cls(d["graphs"], dict(d.get("meta") or {}))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "CalibrationTable":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EdgelinError(f"calibration table is not valid JSON: {e}") from None

    def summary(self) -> dict[str, Any]:
        """A few lines for the manifest: what was seen and how widely states ranged."""
        states = [max(-t["min"], t["max"]) for g in self.graphs.values() for t in g.values() if t["role"] == "state_out"]
        return {**self.meta, "tensors": sum(len(g) for g in self.graphs.values()),
                "state_absmax": max(states) if states else None}
