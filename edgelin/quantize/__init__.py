"""Quantization: shared primitives, typed schemes, the `quantize_package` verb, sensitivity."""
from edgelin.quantize.package import quantize_package
from edgelin.quantize.primitives import ActQuant, WeightQuant
from edgelin.quantize.schemes import (
    W4A8, W4A16, W8A8, W8A16, Int4Format, LayerPrecision, PerChannel, PerGroup, QuantScheme, StatePrecision,
)

__all__ = ["quantize_package", "ActQuant", "WeightQuant", "W4A8", "W4A16", "W8A8", "W8A16",
           "Int4Format", "LayerPrecision", "PerChannel", "PerGroup", "QuantScheme", "StatePrecision"]
