"""Quantization schemes as small typed configs, with a JSON round-trip for the manifest.

    W8A8()                 int8 per-channel weights, uint8 activations, INT16 states   (--int8)
    W8A16()                int8 per-channel weights, uint16 activations, INT16 states  (--int16)
    W4A16(group_size=32)   4-bit block-wise weights, uint16 activations               (--int4)
    W4A8(group_size=32)    4-bit block-wise weights, uint8 activations                (--w4a8)
    W8()                   int8 per-channel weights, float activations, INT16 states  (--w8)

Options are objects or enums, not strings: `PerChannel()` / `PerGroup(64)` for weights,
`StatePrecision.INT16` / `.FP32`, `Int4Format.MATMUL_NBITS` / `.QDQ`. `layers` maps a layer
name ("blocks.0.q_proj", "lm_head") to a `LayerPrecision` and overrides the scheme for it (what
`--max-loss-increase` writes). `embedding` and `lm_head` pick the precision of those two tables.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgelin.calibration.observers import METHODS
from edgelin.errors import EdgelinError
from edgelin.quantize.primitives import GROUP_SIZES, ActQuant, WeightQuant

VERSION = 1


class StatePrecision(str, enum.Enum):
    INT16 = "int16"  # states cross the graph boundary as int16 with a per-tensor scale in the manifest
    FP32 = "fp32"


class LayerPrecision(str, enum.Enum):
    FP32 = "fp32"  # weight and activation left in float
    INT8 = "int8"  # W8, activations at the scheme's width
    INT4 = "int4"  # W4 block-wise, activations at the scheme's width


class Int4Format(str, enum.Enum):
    MATMUL_NBITS = "matmul_nbits"  # com.microsoft MatMulNBits: ONNX Runtime's fast 4-bit kernel
    QDQ = "qdq"  # standard ONNX: blocked uint4 DequantizeLinear -> MatMul (opset 21)


@dataclass(frozen=True)
class PerChannel:
    """One weight scale per output channel."""


@dataclass(frozen=True)
class PerGroup:
    """One weight scale (and zero point) per block of `size` input elements."""

    size: int = 32

    def __post_init__(self) -> None:
        if self.size not in GROUP_SIZES:
            raise EdgelinError(f"group size must be one of {GROUP_SIZES}, got {self.size}")


@dataclass(frozen=True)
class QuantScheme:
    """Base of every scheme; use the named subclasses. `weight_bits` and `act_bits` are fixed per class
    (`act_bits` 0: activations stay float, the weights alone are quantized)."""

    weight_bits: ClassVar[int] = 8
    act_bits: ClassVar[int] = 8
    name: ClassVar[str] = ""

    granularity: PerChannel | PerGroup = field(default_factory=PerChannel)
    state: StatePrecision = StatePrecision.INT16
    embedding: LayerPrecision = LayerPrecision.INT8
    lm_head: LayerPrecision = LayerPrecision.INT8
    observer: str = "mse"  # lowest KL on every model measured (docs/BENCHMARKS.md)
    int4_format: Int4Format = Int4Format.MATMUL_NBITS
    state_headroom: float = 2.0  # state scale covers headroom x the largest |state| seen in calibration
    gptq: bool = False
    smooth: float | None = None  # SmoothQuant alpha, folded into the norms before quantization
    rotate: bool = False  # Hadamard rotation of the residual stream (applied to the torch model)
    layers: dict[str, LayerPrecision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = PerChannel if self.weight_bits == 8 else PerGroup
        if not isinstance(self.granularity, want):
            raise EdgelinError(f"{self.name} needs {want.__name__} weights, got {self.granularity!r}")
        for key, enum_cls in (("state", StatePrecision), ("embedding", LayerPrecision), ("lm_head", LayerPrecision),
                              ("int4_format", Int4Format)):
            value = getattr(self, key)
            try:
                object.__setattr__(self, key, enum_cls(value))
            except ValueError:
                raise EdgelinError(f"{self.name}: {key} must be one of {[e.value for e in enum_cls]}, got {value!r}") from None
        if self.embedding == LayerPrecision.INT4:
            raise EdgelinError(f"{self.name}: the embedding table is int8 or fp32, not int4")
        if self.observer not in METHODS:
            raise EdgelinError(f"{self.name}: observer must be one of {', '.join(METHODS)}, got {self.observer!r}")
        if not self.state_headroom >= 1.0:
            raise EdgelinError(f"{self.name}: state_headroom must be >= 1, got {self.state_headroom}")
        if self.smooth is not None and not 0.0 < self.smooth < 1.0:
            raise EdgelinError(f"{self.name}: smooth (alpha) must be in (0, 1), got {self.smooth}")
        if self.gptq and self.weight_bits != 4:
            raise EdgelinError(f"{self.name}: GPTQ is for 4-bit weights")
        try:
            layers = {str(k): LayerPrecision(v) for k, v in self.layers.items()}
        except ValueError as e:
            raise EdgelinError(f"{self.name}: bad layer precision: {e}") from None
        object.__setattr__(self, "layers", layers)

    # ------------------------------------------------------------ what the graph pass asks

    @property
    def default_precision(self) -> LayerPrecision:
        return LayerPrecision.INT8 if self.weight_bits == 8 else LayerPrecision.INT4

    def precision_of(self, layer: str) -> LayerPrecision:
        if layer in self.layers:
            return self.layers[layer]
        if layer == "lm_head":
            return self.lm_head
        return self.default_precision

    def weight_quant(self, precision: LayerPrecision) -> WeightQuant | None:
        if precision == LayerPrecision.FP32:
            return None
        if precision == LayerPrecision.INT8:
            return WeightQuant(8)
        size = self.granularity.size if isinstance(self.granularity, PerGroup) else 32
        return WeightQuant(4, size)

    @property
    def activations(self) -> ActQuant:
        return ActQuant(self.act_bits, symmetric=False)

    @property
    def state_quant(self) -> ActQuant | None:
        return ActQuant(16, symmetric=True) if self.state == StatePrecision.INT16 else None

    def with_layers(self, layers: dict[str, LayerPrecision]) -> "QuantScheme":
        return dataclasses.replace(self, layers=dict(layers))

    # ------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        g = self.granularity
        return {"scheme": self.name, "version": VERSION, "weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "granularity": {"per_group": g.size} if isinstance(g, PerGroup) else "per_channel",
                "state": self.state.value, "embedding": self.embedding.value, "lm_head": self.lm_head.value,
                "observer": self.observer, "int4_format": self.int4_format.value,
                "state_headroom": self.state_headroom, "gptq": self.gptq, "smooth": self.smooth,
                "rotate": self.rotate, "layers": {k: v.value for k, v in sorted(self.layers.items())}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "QuantScheme":
        if not isinstance(d, dict) or d.get("scheme") not in SCHEMES:
            raise EdgelinError(f"unknown quantization scheme {d.get('scheme') if isinstance(d, dict) else d!r}; "
                               f"known: {', '.join(SCHEMES)}")
        cls = SCHEMES[d["scheme"]]
        g = d.get("granularity", "per_channel")
        kwargs = {k: d[k] for k in ("state", "embedding", "lm_head", "observer", "int4_format", "state_headroom",
                                    "gptq", "smooth", "rotate", "layers") if k in d}
        kwargs["granularity"] = PerGroup(g["per_group"]) if isinstance(g, dict) else PerChannel()
        return cls(**kwargs)


@dataclass(frozen=True)
class W8A8(QuantScheme):
    name: ClassVar[str] = "w8a8"


@dataclass(frozen=True)
class W8A16(QuantScheme):
    name: ClassVar[str] = "w8a16"
    act_bits: ClassVar[int] = 16
    observer: str = "minmax"


@dataclass(frozen=True)
class W4A16(QuantScheme):
    name: ClassVar[str] = "w4a16"
    weight_bits: ClassVar[int] = 4
    act_bits: ClassVar[int] = 16
    granularity: PerChannel | PerGroup = field(default_factory=lambda: PerGroup(32))
    observer: str = "minmax"


@dataclass(frozen=True)
class W4A8(QuantScheme):
    name: ClassVar[str] = "w4a8"
    weight_bits: ClassVar[int] = 4
    granularity: PerChannel | PerGroup = field(default_factory=lambda: PerGroup(32))


@dataclass(frozen=True)
class W8(QuantScheme):
    """Weight-only int8: the matrix products read int8 weights and float activations, the closest
    int8 form to FP32. For CPU decode speed W8A8 with float states is faster (docs/BENCHMARKS.md)."""
    name: ClassVar[str] = "w8"
    act_bits: ClassVar[int] = 0


SCHEMES: dict[str, type[QuantScheme]] = {c.name: c for c in (W8A8, W8A16, W4A16, W4A8, W8)}

# the command line's scheme flags (--int8, ...) and the scheme each names
SCHEME_FLAGS: dict[str, str] = {"int8": "w8a8", "int16": "w8a16", "int4": "w4a16", "w4a8": "w4a8", "w8": "w8"}


def scheme_by_name(name: str, *, group_size: int | None = None, **options: Any) -> QuantScheme:
    """The scheme `name` names, with `options` as its fields.

    Args:
        name: a scheme name (w8a8, w8a16, w4a16, w4a8, w8) or the flag that names it
            (int8, int16, int4, w4a8, w8).
        group_size: the 4-bit block size (`PerGroup(group_size)`); None keeps 32.
        options: any other field of the scheme (state="fp32", smooth=0.5, gptq=True, ...); a
            None value keeps the scheme's default.
    Returns:
        The scheme, checked.
    Example:
        >>> scheme_by_name("int4", group_size=64, gptq=True).granularity
        PerGroup(size=64)
    """
    cls = SCHEMES.get(SCHEME_FLAGS.get(name, name))
    if cls is None:
        raise EdgelinError(f"unknown quantization scheme {name!r}; known: {', '.join([*SCHEME_FLAGS, *SCHEMES])}")
    kwargs = {k: v for k, v in options.items() if v is not None}
    if group_size is not None:
        if cls.weight_bits != 4:
            raise EdgelinError(f"{cls.name} has one weight scale per channel; --group-size is for 4-bit schemes")
        kwargs["granularity"] = PerGroup(group_size)
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise EdgelinError(f"{cls.name} has no option {', '.join(unknown)}")
    return cls(**kwargs)
