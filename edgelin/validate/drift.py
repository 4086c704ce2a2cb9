"""Drift: how KL(FP || Q) and top-1 agreement evolve with position in a long stream."""
from __future__ import annotations

import numpy as np

N_BUCKETS = 32


def drift_curve(kl: np.ndarray, agree: np.ndarray, buckets: int = N_BUCKETS) -> dict[str, list[float]]:
    """Per-position KL [streams, T] and agreement [streams, T] -> means over `buckets` equal position ranges.

    Returns {"position": [last position of each bucket], "kl": [...], "top1_agreement": [...]}.
    """
    T = kl.shape[1]
    edges = np.unique(np.linspace(0, T, min(buckets, T) + 1).astype(int))
    return {
        "position": [int(b) for b in edges[1:]],
        "kl": [float(kl[:, a:b].mean()) for a, b in zip(edges[:-1], edges[1:])],
        "top1_agreement": [float(agree[:, a:b].mean()) for a, b in zip(edges[:-1], edges[1:])],
    }


def drift_slope(curve: dict[str, list[float]]) -> float:
    """KL of the last quarter of the curve over KL of the first quarter (1 = no drift)."""
    kl = np.asarray(curve["kl"])
    q = max(1, len(kl) // 4)
    return float(kl[-q:].mean() / max(kl[:q].mean(), 1e-12))
