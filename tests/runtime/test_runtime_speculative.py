"""Speculative decoding: greedy output equals plain greedy, sampled output follows the target's distribution."""
import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.models import ZOO
from edgelin.runtime import (
    GREEDY, ModelDrafter, PromptLookupDrafter, SamplingConfig, Session, generate, probabilities, speculative_generate,
)
from edgelin.runtime.speculative import verify

TINY = [name for name in ZOO if name.endswith("-tiny")]


class Corrupting:
    """The target itself as drafter, with every third draft replaced: kept and rejected drafts in every run."""

    def __init__(self, session):
        self.inner, self.calls = ModelDrafter(session), 0

    def propose(self, context, k, sampling, rng):
        drafts, q = self.inner.propose(context, k, sampling, rng)
        self.calls += 1
        return [(t + 1) % 256 if (i + self.calls) % 3 == 0 else t for i, t in enumerate(drafts)], q


def final_state(session, g):
    _, state = session.forward(np.array([g.pending], np.int64), g.state)
    return state


def check_greedy_256(session):
    """Speculative greedy output (the target drafting for itself, every third draft spoiled: kept and
    rejected drafts in every pass) equals plain greedy output over 256 tokens, and leaves the same state."""
    prompt = np.random.default_rng(0).integers(0, 256, 13)
    plain = generate(session, prompt, 256)
    want = list(plain)
    spec = speculative_generate(session, Corrupting(session), prompt, 256, speculate="always")
    assert list(spec) == want
    assert spec.stats.passes > 20 and 0 < spec.stats.accepted < spec.stats.drafted
    assert spec.pending == plain.pending
    want_state, got_state = final_state(session, plain), final_state(session, spec)
    for k, a in got_state.items():
        if np.issubdtype(a.dtype, np.integer):  # a quantized state: the same integers
            assert np.array_equal(a, want_state[k]), k
        else:
            assert np.abs(a - want_state[k]).max() <= 1e-4 * max(1.0, np.abs(want_state[k]).max()), k
    return spec


@pytest.mark.parametrize("name", TINY)
def test_greedy_speculative_equals_plain_greedy_256_tokens(zoo_package, name):
    """FP32, through the verify graph: per-position states, nothing replayed."""
    spec = check_greedy_256(Session(zoo_package(name), threads=1))
    assert spec.stats.decode_steps == 0  # every round a verify pass


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny", "mlstm-tiny", "mamba-tiny", "delta-net-tiny"])
def test_greedy_speculative_equals_plain_greedy_256_tokens_int8(zoo_int8, name):
    """W8A8 with INT16 states: the verify graph has the decode graph's quantization, so greedy output
    is plain decoding's (through the prefill graph it was not: other quantization noise)."""
    check_greedy_256(Session(zoo_int8(name), threads=1))


@pytest.mark.parametrize("name", ["gla-tiny", "hybrid-tiny"])
def test_greedy_speculative_without_a_verify_graph(zoo_package, name):
    """Packages without a verify graph (--verify-tokens 0, older ones) verify through the prefill graph."""
    session = Session(zoo_package(name, verify_tokens=0), threads=1)
    assert session.verify_tokens == 0
    check_greedy_256(session)


def test_prompt_lookup_greedy_equals_plain_int8(zoo_int8):
    session = Session(zoo_int8("hybrid-tiny"), threads=1)
    prompt = np.tile(np.random.default_rng(1).integers(0, 256, 7), 4)
    for speculate in ("always", "auto"):
        spec = speculative_generate(session, PromptLookupDrafter(), prompt, 256, speculate=speculate)
        assert list(spec) == list(generate(session, prompt, 256))
        assert spec.stats.passes > 0, speculate


@pytest.mark.parametrize("speculate", ["always", "auto"])
def test_prompt_lookup_greedy_equals_plain(zoo_package, speculate):
    session = Session(zoo_package("hybrid-tiny"), threads=1)
    prompt = np.tile(np.random.default_rng(1).integers(0, 256, 7), 4)  # a repeating prompt: lookups match
    spec = speculative_generate(session, PromptLookupDrafter(), prompt, 256, speculate=speculate)
    assert list(spec) == list(generate(session, prompt, 256))
    assert spec.stats.passes > 0


def test_stop_ids_and_max_new_tokens_cut_inside_a_pass(zoo_package):
    session = Session(zoo_package("gla-tiny"), threads=1)
    prompt = [5, 6, 7]
    want = list(generate(session, prompt, 40))
    stop = want[25]
    cut = want[:want.index(stop)]
    g = speculative_generate(session, ModelDrafter(session), prompt, 40, stop_ids={stop}, speculate="always")
    assert list(g) == cut and g.pending == [stop]
    g = speculative_generate(session, ModelDrafter(session), prompt, 11, speculate="always")
    assert list(g) == want[:11] and g.pending == [want[10]]
    plain = generate(session, prompt, 11)
    list(plain)
    want_state = final_state(session, plain)
    for k, a in final_state(session, g).items():
        assert np.allclose(a, want_state[k], atol=1e-4), k


def test_acceptance_rule_keeps_the_target_distribution():
    """verify(): a draft x ~ q is kept with min(1, p/q), else the token comes from max(0, p - q): the first
    token out follows p, whatever q is. Checked against p, and against q to show the check has teeth."""
    rng = np.random.default_rng(0)
    cfg = SamplingConfig(temperature=1.0)
    logits = np.log(np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.2, 0.2, 0.2, 0.2, 0.2]]))
    p = probabilities(logits[:1], cfg)[0]
    q = np.array([0.05, 0.1, 0.6, 0.2, 0.05])
    counts = np.zeros(5)
    for _ in range(20000):
        x = int(rng.choice(5, p=q))
        kept, nxt = verify(logits, [x], q[None], cfg, rng)
        counts[x if kept else nxt] += 1
    freq = counts / counts.sum()
    assert np.abs(freq - p).max() < 0.015
    assert np.abs(freq - q).max() > 0.3
    greedy_kept, greedy_next = verify(logits, [0], None, GREEDY, rng)
    assert (greedy_kept, greedy_next) == (1, 0)
    assert verify(logits, [1], None, GREEDY, rng) == (0, 0)


def test_sampled_speculative_follows_the_target(zoo_package):
    """End to end with a different model drafting: the second token (the first one verified) has the
    target's distribution, sum over t1 of p(t1) p(t2 | t1), not the draft's."""
    target = Session(zoo_package("gla-tiny"), threads=1)
    draft = Session(zoo_package("retention-tiny"), threads=1)
    cfg, prompt = SamplingConfig(temperature=1.0, top_k=3), [10, 20, 30, 40]

    def second_token_distribution(session):
        first = probabilities(target.forward(np.array([prompt]), target.new_state())[0][:, -1], cfg)[0]
        out = np.zeros(256)
        for t1 in np.flatnonzero(first):
            out += first[t1] * probabilities(session.forward(np.array([prompt + [int(t1)]]), session.new_state())[0][:, -1],
                                             cfg)[0]
        return out

    want, drafts = second_token_distribution(target), second_token_distribution(draft)
    drafter = ModelDrafter(draft)
    seen = np.zeros(256)
    for seed in range(600):
        g = speculative_generate(target, drafter, prompt, 2, cfg, seed=seed, speculate="always", max_draft=2)
        seen[list(g)[1]] += 1
    seen /= seen.sum()
    assert 0.5 * np.abs(seen - want).sum() < 0.08
    assert 0.5 * np.abs(drafts - want).sum() > 0.3  # the draft alone would fail this test


@pytest.mark.parametrize("kw, msg", [
    ({"drafter": object()}, "propose"), ({"max_draft": 0}, "max_draft"), ({"speculate": "never"}, "speculate"),
    ({"prompt_ids": []}, "prompt is empty"), ({"prompt_ids": [300]}, "outside the vocabulary"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
])
def test_bad_arguments(zoo_package, kw, msg):
    session = Session(zoo_package("gla-tiny"), threads=1)
    args = {"session": session, "drafter": PromptLookupDrafter(), "prompt_ids": [1, 2], "max_new_tokens": 4} | kw
    with pytest.raises(EdgelinError, match=msg):
        speculative_generate(**args)
    with pytest.raises(EdgelinError, match="n-gram"):
        PromptLookupDrafter(max_ngram=0)


def test_auto_does_not_verify_through_the_prefill_graph_of_a_quantized_package(zoo_package):
    """Without a verify graph, a quantized package's prefill graph carries other quantization noise than
    its decode graph: "auto" decodes plainly there (identical output), "always" still verifies."""
    session = Session(zoo_package("gla-tiny", verify_tokens=0), threads=1)
    session.manifest.precision = {"scheme": "w8a8"}  # what the manifest of a --int8 package says
    prompt = [1, 2, 3, 1, 2, 3]
    auto = speculative_generate(session, ModelDrafter(session), prompt, 48)
    assert list(auto) == list(generate(session, prompt, 48)) and auto.stats.passes == 0
    always = speculative_generate(session, ModelDrafter(session), prompt, 48, speculate="always")
    list(always)
    assert always.stats.passes > 0
