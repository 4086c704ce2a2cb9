"""CalibrationTable: the observed range of every tensor that will be quantized, per graph, as JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelin.calibration.observers import METHODS
from edgelin.errors import EdgelinError
from edgelin.runtime.schema import Checker, read_json_file

VERSION = 1
MAX_TABLE_BYTES = 256 << 20
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
        _check_tensors(d["graphs"])
        return cls(d["graphs"], dict(Checker("calibration table").mapping(d.get("meta", {}), "meta")))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationTable":
        """A table written by `edgelin calibrate`, read as a file a stranger may have made."""
        path = Path(path)
        return cls.from_dict(read_json_file(path, MAX_TABLE_BYTES, missing=f"no such calibration table: {path}"))

    def summary(self) -> dict[str, Any]:
        """A few lines for the manifest: what was seen and how widely states ranged."""
        states = [max(-t["min"], t["max"]) for g in self.graphs.values() for t in g.values() if t["role"] == "state_out"]
        return {**self.meta, "tensors": sum(len(g) for g in self.graphs.values()),
                "state_absmax": max(states) if states else None}


def _check_tensors(graphs: dict[str, Any]) -> None:
    """Every entry has a known role and finite ranges, so that a bad table fails here, not mid-pass."""
    c = Checker("calibration table")
    for g, tensors in c.mapping(graphs, "graphs", 64).items():
        for name, t in c.mapping(tensors, f"graphs.{g}").items():
            path = f"graphs.{g}.{name}"
            c.mapping(t, path)
            c.text(t.get("role"), f"{path}.role", ROLES)
            if c.number(t.get("min"), f"{path}.min") > c.number(t.get("max"), f"{path}.max"):
                c.fail(f"{path}.min", "at most its max", t["min"])
            for method, pair in c.mapping(t.get("ranges", {}), f"{path}.ranges", 16).items():
                c.text(method, f"{path}.ranges", METHODS)
                if len(c.array(pair, f"{path}.ranges.{method}", 2)) != 2:
                    c.fail(f"{path}.ranges.{method}", "[low, high]", pair)
                lo, hi = (c.number(x, f"{path}.ranges.{method}") for x in pair)
                if lo > hi:
                    c.fail(f"{path}.ranges.{method}", "[low, high]", pair)
            for x in c.array(t.get("channel_absmax", []), f"{path}.channel_absmax"):
                c.number(x, f"{path}.channel_absmax", 0.0)
