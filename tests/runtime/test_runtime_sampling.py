"""Sampling: config checks, greedy, seeded determinism, top-k and top-p supports."""

import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import GREEDY, SamplingConfig, probabilities, sample

LOGITS = np.log(np.array([[0.05, 0.4, 0.3, 0.15, 0.1]]))  # order: 1, 2, 3, 4, 0


@pytest.mark.parametrize("kw, msg", [
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -2}, "top_k"), ({"top_k": 1.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.2}, "top_p"),
])
def test_config_rejects(kw, msg):
    with pytest.raises(EdgelinError, match=msg):
        SamplingConfig(**kw)


def test_greedy():
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).standard_normal((4, 50))
    assert (sample(logits, GREEDY, rng) == logits.argmax(-1)).all()
    assert (sample(logits, SamplingConfig(top_k=1), rng) == logits.argmax(-1)).all()


def test_seed_determinism():
    logits = np.random.default_rng(1).standard_normal((2, 100))
    cfg = SamplingConfig(temperature=1.3, top_k=40, top_p=0.9)
    draw = lambda seed: [sample(logits, cfg, r) for r in [np.random.default_rng(seed)] for _ in range(20)]  # noqa: E731
    assert np.array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


def test_top_k_support_and_renormalised():
    p = probabilities(LOGITS, SamplingConfig(top_k=2))
    np.testing.assert_allclose(p, [[0, 0.4 / 0.7, 0.3 / 0.7, 0, 0]], atol=1e-12)
    got = {int(sample(LOGITS, SamplingConfig(top_k=2), np.random.default_rng(s))[0]) for s in range(200)}
    assert got == {1, 2}


@pytest.mark.parametrize("top_p, support", [(0.3, {1}), (0.4, {1}), (0.5, {1, 2}), (0.75, {1, 2, 3}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_smallest_set_reaching_p(top_p, support):
    p = probabilities(LOGITS, SamplingConfig(top_p=top_p))[0]
    assert set(np.flatnonzero(p)) == support
    assert p.sum() == pytest.approx(1.0)


def test_temperature_and_empirical_frequencies():
    cold = probabilities(LOGITS, SamplingConfig(temperature=0.5))[0]
    assert cold[1] > 0.4 and cold[0] < 0.05
    rng = np.random.default_rng(0)
    draws = sample(np.repeat(LOGITS, 20000, 0), SamplingConfig(), rng)
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 20000, np.exp(LOGITS[0]), atol=0.01)
