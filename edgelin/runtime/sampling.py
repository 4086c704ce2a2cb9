"""Next-token choice from logits: greedy, temperature, top-k, top-p (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token.

    Args:
        temperature: 0 means greedy (argmax); otherwise logits are divided by it.
        top_k: keep only the k most likely tokens (0: no limit).
        top_p: keep the smallest set of most likely tokens whose probability reaches p (1.0: all).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not _is_real(self.temperature) or not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise EdgelinError(f"temperature must be a finite number >= 0, not {self.temperature!r:.40}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise EdgelinError(f"top_k must be an integer >= 0 (0 = off), not {self.top_k!r:.40}")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise EdgelinError(f"top_p must be in (0, 1], not {self.top_p!r:.40}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature 0 or top_k 1)."""
        return self.temperature == 0 or self.top_k == 1


GREEDY = SamplingConfig(temperature=0.0)


def package_sampling(manifest: Manifest, *, temperature: float | None = None, top_k: int | None = None,
                     top_p: float | None = None, fallback: SamplingConfig = GREEDY) -> SamplingConfig:
    """The package's sampling defaults (its manifest's `generation`, from the source's
    generation_config.json), each field overridden where given; `fallback` for packages without defaults.

    Example:
        >>> package_sampling(Session("out/lfm2").manifest, top_k=40)  # doctest: +SKIP
        SamplingConfig(temperature=0.3, top_k=40, top_p=1.0)
    """
    gen = manifest.raw.get("generation")
    base = fallback if gen is None else SamplingConfig(gen.get("temperature", 0.0), gen.get("top_k", 0), gen.get("top_p", 1.0))
    return SamplingConfig(base.temperature if temperature is None else temperature,
                          base.top_k if top_k is None else top_k, base.top_p if top_p is None else top_p)


def package_max_new_tokens(manifest: Manifest, prompt_tokens: int, default: int) -> int:
    """How many tokens to generate by the package's defaults: its `max_new_tokens`, else what its
    `max_length` (prompt included) leaves after `prompt_tokens`, else `default`."""
    gen = manifest.raw.get("generation") or {}
    if "max_new_tokens" in gen:
        return gen["max_new_tokens"]
    if "max_length" in gen:
        return max(0, gen["max_length"] - prompt_tokens)
    return default


def _logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise EdgelinError(f"logits must be a [batch, vocab] array, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise EdgelinError("the logits hold NaN or Inf; nothing to sample from")
    return x


def probabilities(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """The distribution `sample` draws from: softmax(logits / T) restricted by top-k / top-p.

    Args:
        logits: [B, V] float.
    Returns:
        [B, V] float64, each row summing to 1 (one-hot on the argmax when greedy).
    """
    x = _logits(logits)
    B, V = x.shape
    if config.greedy:
        p = np.zeros_like(x)
        p[np.arange(B), x.argmax(-1)] = 1.0
        return p
    with np.errstate(over="ignore"):  # <= 0 after the shift: a tiny temperature gives -inf, not NaN
        x = (x - x.max(-1, keepdims=True)) / config.temperature
    order = np.argsort(-x, axis=-1, kind="stable")  # [B, V] most likely first
    ps = np.exp(np.take_along_axis(x, order, -1))
    if config.top_k and config.top_k < V:
        ps[:, config.top_k:] = 0.0
    ps /= ps.sum(-1, keepdims=True)
    if config.top_p < 1.0:
        before = np.cumsum(ps, -1) - ps  # mass of strictly more likely tokens
        ps[before >= config.top_p] = 0.0  # keeps the top token always
        ps /= ps.sum(-1, keepdims=True)
    p = np.empty_like(ps)
    np.put_along_axis(p, order, ps, -1)
    return p


def sample(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Pick one token per row of `logits` [B, V]; returns int64 [B].

    Example:
        >>> rng = np.random.default_rng(0)
        >>> sample(np.array([[0.0, 5.0, 1.0]]), SamplingConfig(temperature=0.0), rng)
        array([1])
    """
    if config.greedy:
        return _logits(logits).argmax(-1).astype(np.int64)
    p = probabilities(logits, config)
    u = rng.random(p.shape[0])[:, None]
    idx = (np.cumsum(p, -1) <= u * p.sum(-1, keepdims=True)).sum(-1)  # first index past u
    return np.minimum(idx, p.shape[1] - 1).astype(np.int64)
