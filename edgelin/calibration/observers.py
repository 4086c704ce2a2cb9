"""Observers: running statistics of one tensor, turned into a clipping range [lo, hi].

An observer only accumulates; it writes nothing and edits no graph. Every observer keeps the exact
min / max and a histogram over [-R, R] whose range doubles (merging bin pairs, so no mass moves)
when a value falls outside it. From that one histogram it derives four ranges:

  minmax      the exact min and max seen
  percentile  the `percentile`-th and (100 - `percentile`)-th percentiles
  mse         the clip factor c in (0, 1] on [min, max] minimising the expected squared error of
              `bits`-bit asymmetric quantization (rounding noise inside, clipping error outside)
  entropy     the same search minimising KL(reference histogram || quantized histogram)
"""
from __future__ import annotations

import numpy as np

from edgelin.errors import EdgelinError

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048  # a power of two, so doubling the range merges bins exactly
CLIP_FACTORS = np.linspace(0.05, 1.0, 96)
FLUSH = 1 << 16  # values buffered before they are binned


class TensorObserver:
    """Running min, max, per-channel |max| (last axis) and a doubling histogram of one tensor."""

    def __init__(self, name: str):
        self.name = name
        self.lo, self.hi = np.inf, -np.inf
        self.count = 0
        self.radius = 0.0
        self.hist = np.zeros(BINS, np.float64)
        self.channel_absmax: np.ndarray | None = None
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._pending_absmax = 0.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise EdgelinError(f"calibration saw NaN or Inf in tensor {self.name}; the model or its input is broken")
        self.lo, self.hi, self.count = min(self.lo, lo), max(self.hi, hi), self.count + x.size
        if x.ndim >= 1:
            cmax = np.abs(x.reshape(-1, x.shape[-1])).max(0)
            self.channel_absmax = cmax if self.channel_absmax is None or self.channel_absmax.shape != cmax.shape \
                else np.maximum(self.channel_absmax, cmax)
        self._pending.append(x.reshape(-1))
        self._pending_size += x.size
        self._pending_absmax = max(self._pending_absmax, -lo, hi)
        if self._pending_size >= FLUSH:
            self._flush()

    def _flush(self) -> None:
        """Histogram the buffered values (small decode-step tensors are binned in batches)."""
        if not self._pending:
            return
        x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        need = max(self._pending_absmax, 1e-12)
        self._pending, self._pending_size, self._pending_absmax = [], 0, 0.0
        if self.radius == 0.0:
            self.radius = need
        while need > self.radius:  # double: bins pair up, the old range lands in the middle half
            merged = self.hist.reshape(-1, 2).sum(1)
            self.hist = np.zeros(BINS)
            self.hist[BINS // 4: BINS // 4 + BINS // 2] = merged
            self.radius *= 2
        # np.histogram's bins, faster: float32 in place, clipped before the cast (the same bins)
        y = np.add(x, np.float32(self.radius), dtype=np.float32)
        y *= np.float32(BINS / (2 * self.radius))
        np.clip(y, 0, BINS - 1, out=y)
        self.hist += np.bincount(y.astype(np.int32), minlength=BINS)

    # ------------------------------------------------------------ ranges

    def _centers(self) -> np.ndarray:
        self._flush()
        edges = np.linspace(-self.radius, self.radius, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2

    def percentile_range(self, percentile: float = 99.99) -> tuple[float, float]:
        """Outer edges of the bins where the CDF crosses (100 - p)% and p%, kept inside [min, max]."""
        self._flush()
        cdf = np.cumsum(self.hist) / max(self.hist.sum(), 1.0)
        edges = np.linspace(-self.radius, self.radius, BINS + 1)
        lo = edges[min(np.searchsorted(cdf, 1 - percentile / 100), BINS - 1)]
        hi = edges[min(np.searchsorted(cdf, percentile / 100), BINS - 1) + 1]
        return max(float(lo), self.lo), min(float(hi), self.hi)

    def _search(self, bits: int, kind: str) -> tuple[float, float]:
        """Best clip range c * [min, max] over CLIP_FACTORS, all factors evaluated at once."""
        c = self._centers()
        p = self.hist / max(self.hist.sum(), 1.0)
        lo0, hi0 = min(self.lo, 0.0), max(self.hi, 0.0)
        levels = (1 << bits) - 1
        lo, hi = lo0 * CLIP_FACTORS[:, None], hi0 * CLIP_FACTORS[:, None]  # [F, 1]
        step = np.where(hi > lo, (hi - lo) / levels, 1.0)
        idx = np.clip(np.round((c[None, :] - lo) / step), 0, levels)  # [F, BINS]: each bin's grid point
        if kind == "mse":
            err = np.sum(p * (c - (idx * step + lo)) ** 2, axis=1)
        else:  # KL(p || p moved onto the grid and spread evenly over the bins that feed each point)
            nz = p > 0
            flat = (idx + np.arange(len(CLIP_FACTORS))[:, None] * (levels + 1)).astype(np.int64)
            size = len(CLIP_FACTORS) * (levels + 1)
            mass = np.bincount(flat.ravel(), weights=np.broadcast_to(p, flat.shape).ravel(), minlength=size)
            width = np.bincount(flat.ravel(), weights=np.broadcast_to(nz, flat.shape).ravel().astype(float), minlength=size)
            q = mass[flat] / np.maximum(width[flat], 1)
            err = np.sum(np.where(nz, p * np.log(np.where(nz, p, 1) / np.maximum(q, 1e-12)), 0), axis=1)
        best = int(np.argmin(err))
        return float(lo[best, 0]), float(hi[best, 0])

    def summary(self, bits: int = 8, percentile: float = 99.99, search: bool = True) -> dict:
        """The ranges of every method, as JSON-ready floats (mse and entropy fall back to minmax
        when `search` is False, e.g. for states, which must never clip)."""
        if self.count == 0:
            raise EdgelinError(f"calibration never saw tensor {self.name}")
        self._flush()
        mm = (self.lo, self.hi)
        ranges = {"minmax": mm, "percentile": self.percentile_range(percentile),
                  "mse": self._search(bits, "mse") if search else mm,
                  "entropy": self._search(bits, "entropy") if search else mm}
        return {"min": self.lo, "max": self.hi, "count": self.count,
                "ranges": {k: [float(a), float(b)] for k, (a, b) in ranges.items()}}
