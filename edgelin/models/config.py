"""LMConfig: the whole architecture of a model, with a per-layer mixer pattern so hybrids are one config."""
from __future__ import annotations

import dataclasses
import json
import math
import typing
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

        if not isinstance(self.pattern, (list, tuple)) or not self.pattern or not all(isinstance(p, str) for p in self.pattern):
            raise EdgelinError(f"config: pattern must be a non-empty list of token mixer names, got {self.pattern!r}")
        if not isinstance(self.mixers, dict) or not all(isinstance(o, dict) for o in self.mixers.values()):
            raise EdgelinError(f"config: mixers must map mixer names to objects of options, got {self.mixers!r}")
        for name in list(self.pattern) + list(self.mixers):
            if name not in MIXERS:
                raise EdgelinError(f"config: unknown token mixer {name!r}; known: {', '.join(sorted(MIXERS))}")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise EdgelinError(f"config: {key} must be a positive integer, got {getattr(self, key)!r}")
        if not _is_int(self.d_ff) or self.d_ff < -1:
            raise EdgelinError(f"config: d_ff must be an integer >= -1 (0 = from d_model, -1 = no MLP), got {self.d_ff!r}")
        for key in ("norm_eps", "init_std"):
            if not _is_number(getattr(self, key)) or getattr(self, key) <= 0:
                raise EdgelinError(f"config: {key} must be a positive number, got {getattr(self, key)!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise EdgelinError(f"config: tie_embeddings must be true or false, got {self.tie_embeddings!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise EdgelinError(f"config: seed must be an integer in [0, 2**32), got {self.seed!r}")
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
    """Build a family's options dataclass from config.mixers[name], each value checked against its field.

    Values must have the field's type (an int is accepted for a float, null only where the field
    allows None). Int fields are sizes: >= 1, or >= 0 where the default 0 means "derive it". Float
    fields are finite, >= 0 where the default is, and > 0 for the `expand_*` factors of a size.
    """
    raw = config.mixers.get(name, {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EdgelinError(f"config: unknown option(s) {', '.join(unknown)} for mixer {name!r}")
    hints = typing.get_type_hints(options_cls)
    return options_cls(**{key: _option(name, key, value, hints[key], fields[key].default) for key, value in raw.items()})


def _option(mixer: str, key: str, value: Any, hint: Any, default: Any) -> Any:
    args = typing.get_args(hint) or (hint,)
    nullable = " or null" if type(None) in args else ""
    if value is None and nullable:
        return value
    kinds = [k for k in args if k is not type(None)]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        return value  # a type this check does not know: the family's own checks apply
    kind = kinds[0]
    if kind is int:
        least = 0 if default == 0 else 1
        ok, need = _is_int(value) and value >= least, f"an integer >= {least}"
    elif kind is float:
        least = 0 if isinstance(default, (int, float)) and default >= 0 else -math.inf
        positive = key.startswith("expand")
        ok = _is_number(value) and value >= least and (value > 0 or not positive)
        need = "a positive number" if positive else "a number >= 0" if least == 0 else "a finite number"
    else:
        ok, need = isinstance(value, kind), "true or false" if kind is bool else "a string"
    if not ok:
        raise EdgelinError(f"config: option {key!r} of mixer {mixer!r} must be {need}{nullable}, got {value!r}")
    return float(value) if kind is float else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
