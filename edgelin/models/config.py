"""LMConfig: the whole architecture of a model, with a per-layer mixer pattern so hybrids are one config."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelin.errors import EdgelinError


@dataclass
class LMConfig:
    """Embedding -> blocks (norm, token mixer, norm, SwiGLU MLP) -> norm -> head.

    `pattern` names the token mixer of each layer and repeats when shorter than `n_layers`:
    ["short_conv", "gla", "short_conv", "swa"] is a hybrid. `mixers` holds per-family options
    ({"gla": {"expand_k": 0.5}}), checked by that family's options dataclass.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    pattern: list[str] = field(default_factory=lambda: ["gla"])
    d_ff: int = 0  # 0 = round(8/3 * d_model) to a multiple of 32; -1 = no MLP (Mamba2 blocks)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mixers: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        from edgelin.models.layers import MIXERS

        if not self.pattern:
            raise EdgelinError("config: pattern must name at least one token mixer")
        for name in list(self.pattern) + list(self.mixers):
            if name not in MIXERS:
                raise EdgelinError(f"config: unknown token mixer {name!r}; known: {', '.join(sorted(MIXERS))}")
        for key, value in (("vocab_size", self.vocab_size), ("d_model", self.d_model), ("n_layers", self.n_layers), ("n_heads", self.n_heads)):
            if not isinstance(value, int) or value < 1:
                raise EdgelinError(f"config: {key} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise EdgelinError(f"config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    def mixer(self, layer: int) -> str:
        return self.pattern[layer % len(self.pattern)]

    @property
    def ffn_dim(self) -> int:
        if self.d_ff > 0:
            return self.d_ff
        return 0 if self.d_ff < 0 else 32 * round(8 * self.d_model / 3 / 32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"architecture", "edgelin_version"})
        if unknown:
            raise EdgelinError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"architecture": "edgelin-lm", **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LMConfig":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise EdgelinError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise EdgelinError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise EdgelinError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def mixer_options(options_cls: type, config: LMConfig, name: str) -> Any:
    """Build a family's options dataclass from config.mixers[name], with a clear error on a bad key."""
    raw = config.mixers.get(name, {})
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EdgelinError(f"config: unknown option(s) {', '.join(unknown)} for mixer {name!r}")
    return options_cls(**raw)
