"""Quantization: shared primitives, typed schemes, the `quantize_package` verb, sensitivity."""
