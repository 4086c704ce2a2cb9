"""Quantization math shared by export and quantization-aware training, in torch and numpy form.

Everything that decides an integer lives here, so an exported package and a QAT model round the
same way. Conventions (identical in both forms, and in the ONNX graphs `edgelin.quantize` writes):

Weights, `w` in torch Linear layout `[out, in]`:
  * 8 bit (`WeightQuant(8)`): symmetric, one scale per output channel (row).
        scale[o] = max(|w[o, :]|) / 127          (float32; an all-zero row gets scale 1)
        q        = clip(round(w / scale), -127, 127)   int8, zero point 0
  * 4 bit (`WeightQuant(4, group_size=G)`, G in 32/64/128): asymmetric, one scale and one zero
    point per block of G consecutive input elements of a row (`in` must be a multiple of G).
        lo = min(min(block), 0), hi = max(max(block), 0)  (zero is always representable)
        scale = (hi - lo) / 15                   (float32; 1 where hi == lo)
        zero  = clip(round(-lo / scale), 0, 15)  uint8
        q     = clip(round(w / scale) + zero, 0, 15)      uint8
  * dequantized: (q - zero) * scale.

Activations and states, per tensor (`ActQuant`):
  * asymmetric (activations, uint8 / uint16): lo, hi widened to include 0;
        scale = (hi - lo) / (2**bits - 1), zero = clip(round(-lo / scale), 0, 2**bits - 1)
  * symmetric (recurrent states, int16 / int8): a = max(-lo, hi); scale = a / (2**(bits-1) - 1), zero 0.
  * quantize as ONNX QuantizeLinear does: q = clip(round(x / scale) + zero, dtype min, dtype max)
    (the full dtype range, e.g. [-32768, 32767], so a graph and this function agree on clipping).

`round` is round-half-to-even everywhere (torch.round, numpy.round and ONNX agree). Divisions are
float32. Fake quantization passes gradients straight through (d out / d x = 1, clipped or not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgelin.errors import EdgelinError

GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class WeightQuant:
    """How a weight matrix is quantized: `bits` 8 (per output channel) or 4 (per block of `group_size`)."""

    bits: int = 8
    group_size: int = 0  # 0 = one scale per output channel; 4-bit needs a block size

    def __post_init__(self) -> None:
        if self.bits == 8 and self.group_size != 0:
            raise EdgelinError(f"8-bit weights are per output channel; group_size must be 0, got {self.group_size}")
        if self.bits == 4 and self.group_size not in GROUP_SIZES:
            raise EdgelinError(f"4-bit weights need group_size in {GROUP_SIZES}, got {self.group_size}")
        if self.bits not in (4, 8):
            raise EdgelinError(f"weight bits must be 4 or 8, got {self.bits}")

    @property
    def symmetric(self) -> bool:
        return self.bits == 8

    @property
    def qmin(self) -> int:
        return -127 if self.bits == 8 else 0

    @property
    def qmax(self) -> int:
        return 127 if self.bits == 8 else 15


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor activation or state quantization: `bits` 8 or 16, symmetric (signed) or not (unsigned)."""

    bits: int = 8
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise EdgelinError(f"activation bits must be 8 or 16, got {self.bits}")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype({(8, True): np.int8, (8, False): np.uint8, (16, True): np.int16, (16, False): np.uint16}[self.bits, self.symmetric])


# ---------------------------------------------------------------- weights, torch

def _blocks(w: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    """[out, in] -> [out, n_blocks, block] (one block per row for 8 bit)."""
    if w.dim() != 2:
        raise EdgelinError(f"weights must be 2-D [out, in], got shape {tuple(w.shape)}")
    if spec.bits == 8:
        return w[:, None, :]
    if w.shape[1] % spec.group_size:
        raise EdgelinError(f"input size {w.shape[1]} is not a multiple of group_size {spec.group_size}")
    return w.reshape(w.shape[0], -1, spec.group_size)


def quantize_weight(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a weight `w` [out, in] (torch Linear layout).

    Args:
        w: float weight.
        spec: `WeightQuant(8)` or `WeightQuant(4, group_size=G)`.
    Returns:
        (q, scale, zero): q [out, in] int8 (8 bit) or uint8 holding 0..15 (4 bit);
        scale and zero [out, n_blocks] (n_blocks = 1 for 8 bit) float32 and int32.
    Example:
        >>> q, s, z = quantize_weight(torch.randn(8, 64), WeightQuant(4, 32))
        >>> q.shape, s.shape
        (torch.Size([8, 64]), torch.Size([8, 2]))
    """
    b = _blocks(w.detach().float(), spec)
    if spec.symmetric:
        scale = b.abs().amax(-1) / 127.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        q = torch.clamp(torch.round(b / scale[..., None]), -127, 127).to(torch.int8)
    else:
        lo = torch.clamp(b.amin(-1), max=0.0)
        hi = torch.clamp(b.amax(-1), min=0.0)
        scale = (hi - lo) / 15.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.clamp(torch.round(-lo / scale), 0, 15)
        q = torch.clamp(torch.round(b / scale[..., None]) + zero[..., None], 0, 15).to(torch.uint8)
        zero = zero.to(torch.int32)
    return q.reshape(w.shape), scale, zero


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    """(q - zero) * scale back to a float32 [out, in] weight."""
    b = _blocks(q.to(torch.float32), spec)
    return ((b - zero[..., None].float()) * scale[..., None]).reshape(q.shape)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return xq

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def fake_quantize_weight(w: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    """Quantize then dequantize `w` [out, in]; gradients pass straight through to `w`."""
    q, scale, zero = quantize_weight(w, spec)
    return _StraightThrough.apply(w, dequantize_weight(q, scale, zero, spec).to(w.dtype))


# ---------------------------------------------------------------- weights, numpy

def quantize_weight_np(w: np.ndarray, spec: WeightQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy twin of `quantize_weight`: same layout, same integers, same float32 scales."""
    q, scale, zero = quantize_weight(torch.from_numpy(np.array(w, dtype=np.float32, order="C")), spec)
    return q.numpy(), scale.numpy(), zero.numpy()


def dequantize_weight_np(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, spec: WeightQuant) -> np.ndarray:
    rows, cols = q.shape
    blocks = q.astype(np.float32).reshape(rows, scale.shape[1], -1)
    return ((blocks - zero[..., None].astype(np.float32)) * scale[..., None]).reshape(rows, cols)


# ---------------------------------------------------------------- activations and states

def activation_qparams(lo: float, hi: float, spec: ActQuant) -> tuple[np.float32, int]:
    """Per-tensor (scale, zero point) for a calibrated range [lo, hi] (widened to include 0)."""
    lo32, hi32 = np.float32(min(float(lo), 0.0)), np.float32(max(float(hi), 0.0))
    if not (np.isfinite(lo32) and np.isfinite(hi32)):
        raise EdgelinError(f"cannot quantize a tensor with range [{lo}, {hi}]: not finite")
    if spec.symmetric:
        scale = np.float32(max(-lo32, hi32) / np.float32(spec.qmax))
        zero = 0
    else:
        scale = np.float32((hi32 - lo32) / np.float32(spec.qmax))
    if scale == 0:
        scale = np.float32(1.0)
    if not spec.symmetric:
        zero = int(np.clip(np.round(-lo32 / scale), 0, spec.qmax))
    return scale, zero


def quantize_activation_np(x: np.ndarray, scale: float, zero: int, spec: ActQuant) -> np.ndarray:
    """ONNX QuantizeLinear: clip(round(x / scale) + zero) over the dtype's full range."""
    info = np.iinfo(spec.np_dtype)
    q = np.round(np.asarray(x, np.float32) / np.float32(scale)) + zero
    return np.clip(q, info.min, info.max).astype(spec.np_dtype)


def fake_quantize_activation(x: torch.Tensor, scale: float, zero: int, spec: ActQuant) -> torch.Tensor:
    """Quantize then dequantize `x` with per-tensor (scale, zero); gradients pass straight through."""
    info = np.iinfo(spec.np_dtype)
    s = torch.tensor(float(np.float32(scale)), dtype=torch.float32, device=x.device)
    q = torch.clamp(torch.round(x.detach().float() / s) + zero, int(info.min), int(info.max))
    return _StraightThrough.apply(x, ((q - zero) * s).to(x.dtype))
