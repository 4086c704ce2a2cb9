"""LMConfig: the whole architecture of a model, with a per-layer mixer pattern so hybrids are one config."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgelin.errors import EdgelinError
from edgelin.runtime.schema import MAX_STATE_BYTES, read_json_file, short

SIZE_LIMIT = 2**63  # every size is an int64 to torch
MAX_CONFIG_BYTES = 4 << 20
MAX_LAYERS = 4096
MAX_PARAMETER_BYTES = 64 << 30  # FP32 parameters; lowered to this machine's memory where that is smaller
LIMIT_WHY = "(the smaller of 64 GiB and this machine's memory)"
NORMS = ("rms", "layer")
MLPS = ("swiglu", "gelu", "gelu_tanh")


@dataclass
class LMConfig:
    """Embedding (+ learned positions) -> blocks (norm, token mixer, norm, MLP) -> norm -> head.

    `pattern` names the token mixer of each layer and repeats when shorter than `n_layers`:
    ["short_conv", "gla", "short_conv", "swa"] is a hybrid. `mixers` holds per-family options
    ({"gla": {"expand_k": 0.5}}), checked by that family's options dataclass.

    `norm`: "rms" (RMSNorm) or "layer" (LayerNorm with a bias, GPT-2). `mlp`: "swiglu", or "gelu" /
    "gelu_tanh" (up, GELU exact or its tanh approximation, down: GPT-2). `max_positions` > 0 adds a
    learned absolute position embedding of that many positions (GPT-2's wpe); the position it is at
    is a state of layer 0 (`position`, lm.py). Configs written before these fields mean the defaults.
    """

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    pattern: list[str] = field(default_factory=lambda: ["gla"])
    d_ff: int = 0  # 0 = round(8/3 * d_model) to a multiple of 32; -1 = no MLP (Mamba2 blocks)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    logit_soft_cap: float | None = None  # logits -> cap * tanh(logits / cap) (xLSTM); None: raw logits
    mixers: dict[str, dict[str, Any]] = field(default_factory=dict)
    init_std: float = 0.02
    seed: int = 0
    norm: str = "rms"
    mlp: str = "swiglu"
    mlp_bias: bool = False
    max_positions: int = 0  # learned absolute position embeddings; 0 = none

    def __post_init__(self) -> None:
        from edgelin.models.layers import MIXERS

        if not isinstance(self.pattern, (list, tuple)) or not self.pattern or not all(isinstance(p, str) for p in self.pattern):
            raise EdgelinError(f"config: pattern must be a non-empty list of token mixer names, got {short(self.pattern)}")
        if not isinstance(self.mixers, dict) or not all(isinstance(o, dict) for o in self.mixers.values()):
            raise EdgelinError(f"config: mixers must map mixer names to objects of options, got {short(self.mixers)}")
        for name in dict.fromkeys(list(self.pattern) + list(self.mixers)):
            if name not in MIXERS:
                raise EdgelinError(f"config: unknown token mixer {short(name)}; known: {', '.join(sorted(MIXERS))}")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads"):
            if need := size_needed(getattr(self, key), 1):
                raise EdgelinError(f"config: {key} must be {need}, got {short(getattr(self, key))}")
        if need := size_needed(self.d_ff, -1):
            raise EdgelinError(f"config: d_ff must be {need} (0 = from d_model, -1 = no MLP), got {short(self.d_ff)}")
        for key in ("norm_eps", "init_std"):
            if not is_number(getattr(self, key)) or getattr(self, key) <= 0:
                raise EdgelinError(f"config: {key} must be a positive number, got {short(getattr(self, key))}")
        for key in ("tie_embeddings", "mlp_bias"):
            if not isinstance(getattr(self, key), bool):
                raise EdgelinError(f"config: {key} must be true or false, got {short(getattr(self, key))}")
        for key, known in (("norm", NORMS), ("mlp", MLPS)):
            if not isinstance(getattr(self, key), str) or getattr(self, key) not in known:
                raise EdgelinError(f"config: {key} must be one of {', '.join(known)}, got {short(getattr(self, key))}")
        if need := size_needed(self.max_positions, 0):
            raise EdgelinError(f"config: max_positions must be {need} (0 = no position embeddings), got {short(self.max_positions)}")
        if self.logit_soft_cap is not None and (not is_number(self.logit_soft_cap) or self.logit_soft_cap <= 0):
            raise EdgelinError(f"config: logit_soft_cap must be a positive number or null, got {short(self.logit_soft_cap)}")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise EdgelinError(f"config: seed must be an integer in [0, 2**32), got {short(self.seed)}")
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
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise EdgelinError(f"config: unknown field(s) {', '.join(map(short, unknown[:5]))}{more}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"architecture": "edgelin-lm", **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LMConfig":
        """Read config.json, check every field and that the model fits (`check_fits`) before anything is allocated."""
        config = cls.from_dict(read_json_object(Path(path)))
        check_fits(config)
        return config


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file a stranger may have made: a regular file of at most 4 MiB, UTF-8,
    nested at most 64 deep. Every problem is one EdgelinError naming the file."""
    doc = read_json_file(path, MAX_CONFIG_BYTES, missing=f"no {path.name} in {path.parent}")
    if not isinstance(doc, dict):
        raise EdgelinError(f"{path} must hold a JSON object")
    return doc


def check_fits(config: LMConfig) -> None:
    """Refuse a config that cannot be built, before anything is allocated: FP32 parameters over
    64 GiB (or this machine's memory), more than 4096 layers, or one sequence's recurrent state
    over the runtime's 4 GiB.

    Embeddings, norms and MLPs are counted from the sizes alone, so a huge size is refused without
    building anything; then one layer of each mixer family is built on the meta device (no memory)
    to count its parameters and state exactly.
    """
    limit = parameter_limit()
    d, L = config.d_model, config.n_layers
    norm = d * (2 if config.norm == "layer" else 1)
    # embeddings, head, positions, final norm
    outer = config.vocab_size * d * (1 if config.tie_embeddings else 2) + config.max_positions * d + norm
    least = outer
    if 4 * outer <= limit:  # d_model is small enough now for ffn_dim's float arithmetic
        mats = 3 if config.mlp == "swiglu" else 2
        least += L * (norm + (mats * d * config.ffn_dim + norm if config.ffn_dim else 0))  # norms and MLPs
    if 4 * least > limit:
        raise EdgelinError(f"config: the model needs at least {_gib(4 * least)} for its FP32 parameters "
                           f"({least:.3g} parameters), over the limit of {_gib(limit)} {LIMIT_WHY}")
    if L > MAX_LAYERS:
        raise EdgelinError(f"config: n_layers {L} is over the limit of {MAX_LAYERS}")
    params, state = outer, 0
    for name, count in Counter(config.mixer(layer) for layer in range(L)).items():
        layer_params, layer_state = _layer_size(config, config.pattern.index(name))
        params, state = params + count * layer_params, state + count * layer_state
    if 4 * params > limit:
        raise EdgelinError(f"config: the model needs {_gib(4 * params)} for its FP32 parameters "
                           f"({params:.3g} parameters), over the limit of {_gib(limit)} {LIMIT_WHY}")
    if state > MAX_STATE_BYTES:
        raise EdgelinError(f"config: the recurrent state of one sequence needs {_gib(state)}, "
                           f"over the runtime's limit of {_gib(MAX_STATE_BYTES)}")


def parameter_limit() -> int:
    """Bytes of FP32 parameters a model may need here: 64 GiB, or this machine's memory where smaller."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return MAX_PARAMETER_BYTES
    return min(MAX_PARAMETER_BYTES, memory) if memory > 0 else MAX_PARAMETER_BYTES


def _layer_size(config: LMConfig, layer: int) -> tuple[int, int]:
    """(parameters, FP32 state bytes of one sequence) of block `layer`, built on the meta device."""
    from edgelin.models.lm import Block  # lm imports this module

    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            block = Block(config, layer)
    except (RuntimeError, TypeError, OverflowError):  # a size past what torch can index
        raise EdgelinError(f"config: layer {layer} ({config.mixer(layer)}) is too large to build: "
                           "its sizes overflow int64") from None
    where = f"config: mixer {config.mixer(layer)!r} in layer {layer}"
    if any(p.numel() == 0 for p in block.parameters()):
        raise EdgelinError(f"{where}: its sizes leave a weight with no elements")
    shapes = block.mixer.state_shapes(1)
    if 4 * sum(math.prod(shape) for shape in shapes.values()) <= MAX_STATE_BYTES:
        _dry_run(block, shapes, config.d_model, where)
    return sum(p.numel() for p in block.parameters()), sum(4 * math.prod(shape) for shape in shapes.values())


def _dry_run(block: torch.nn.Module, shapes: dict[str, tuple[int, ...]], d_model: int, where: str) -> None:
    """Run the block's parallel and step forms on the meta device (shapes only, no memory): sizes that
    load but do not fit together (a head count that does not divide a width, ...) fail here, not in export."""
    try:
        with torch.device("meta"), torch.no_grad():
            state = {name: torch.zeros(shape) for name, shape in shapes.items()}
            x = torch.zeros(1, 3, d_model)
            block(x, state)
            block(x[:, :1], state, step=True)
    except (RuntimeError, ValueError, IndexError, TypeError, ZeroDivisionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise EdgelinError(f"{where}: its sizes do not fit together ({first})") from None


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def mixer_options(options_cls: type, config: LMConfig, name: str) -> Any:
    """Build a family's options dataclass from config.mixers[name], each value checked against its field.

    Values must have the field's type (an int is accepted for a float, null only where the field
    allows None). Int fields are sizes below 2**63: >= 1, or >= 0 where the default 0 means "derive it". Float
    fields are finite, >= 0 where the default is, and > 0 for the `expand_*` factors of a size.
    """
    raw = config.mixers.get(name, {})
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise EdgelinError(f"config: unknown option(s) {', '.join(map(short, unknown[:5]))} for mixer {name!r}")
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
        need = size_needed(value, 0 if default == 0 else 1)
        ok = need is None
    elif kind is float:
        least = 0 if isinstance(default, (int, float)) and default >= 0 else -math.inf
        positive = key.startswith("expand")
        ok = is_number(value) and value >= least and (value > 0 or not positive)
        need = "a positive number" if positive else "a number >= 0" if least == 0 else "a finite number"
    else:
        ok, need = isinstance(value, kind), "true or false" if kind is bool else "a string"
    if not ok:
        raise EdgelinError(f"config: option {key!r} of mixer {mixer!r} must be {need}{nullable}, got {short(value)}")
    return float(value) if kind is float else value


def size_needed(value: Any, least: int) -> str | None:
    """What a size field must be when `value` is not a valid one (an int from `least` to below 2**63), else None."""
    if not is_int(value) or value < least:
        return f"an integer >= {least}"
    return "an integer below 2**63" if value >= SIZE_LIMIT else None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite float, or an int below 2**63 in magnitude (a larger one has no float)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return is_int(value) and abs(value) < SIZE_LIMIT
