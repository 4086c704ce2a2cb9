"""Hostile arguments to the state APIs (prefix cache, prefill, Conversation, BatchDecoder, speculative): one
EdgelinError line each, and nothing left half-changed."""
import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import (
    BatchDecoder, Conversation, Prefill, PrefixCache, PromptLookupDrafter, generate, prefill, speculative_generate,
)


def error_of(fn, *args, **kw):
    with pytest.raises(EdgelinError) as e:
        fn(*args, **kw)
    assert str(e.value) and "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("kw", [{"max_bytes": -1}, {"max_bytes": 1.5}, {"max_bytes": True}, {"spill_bytes": "x"},
                                {"spill_dir": 5}, {"spill_dir": "/proc/no/such/place"}])
def test_bad_cache_arguments(session, kw):
    error_of(PrefixCache, session, **kw)


def test_cache_needs_a_session():
    error_of(PrefixCache, "out/pkg")


@pytest.mark.parametrize("tokens, state, logits", [
    ([], "ok", "ok"), ("abc", "ok", "ok"), ([1.5], "ok", "ok"), ([256], "ok", "ok"), ([[1]], "ok", "ok"),
    ([1], {}, "ok"), ([1], "batch2", "ok"), ([1], "ok", np.zeros(3)), ([1], "ok", "text"),
])
def test_bad_cache_entries(session, tokens, state, logits):
    cache = PrefixCache(session)
    state = {"ok": session.new_state(1), "batch2": session.new_state(2)}.get(state, state) if isinstance(state, str) else state
    logits = np.zeros(256, np.float32) if isinstance(logits, str) and logits == "ok" else logits
    error_of(cache.put, tokens, state, logits)
    assert len(cache) == 0
    error_of(cache.longest, "abc")


@pytest.mark.parametrize("kw", [{"tokens": []}, {"tokens": [300]}, {"tokens": "hi"}, {"every": 0}, {"every": 2.5},
                                {"cache": "cache"}, {"session": None}])
def test_bad_prefill(session, kw):
    args = {"session": session, "tokens": [1, 2, 3]} | kw
    error_of(Prefill, **args)


def test_cache_of_another_session_is_refused(session, pkg):
    from edgelin.runtime import Session

    other = PrefixCache(Session(pkg, threads=1))
    error_of(prefill, session, [1, 2], other)
    error_of(Conversation, session, cache=other)


@pytest.mark.parametrize("position", [-1, 4, 1.0, True, None, "1"])
def test_bad_rewind_leaves_the_conversation_as_it_was(session, position):
    chat = Conversation(session)
    chat.feed([1, 2, 3])
    before = chat.logits.copy()
    error_of(chat.rewind, position)
    assert chat.position == 3 and np.array_equal(chat.logits, before)


@pytest.mark.parametrize("ids", [[], [256], "abc", [[1, 2]], [0.5]])
def test_bad_feed(session, ids):
    chat = Conversation(session)
    error_of(chat.feed, ids)
    assert chat.position == 0


@pytest.mark.parametrize("kw", [{"checkpoint_every": 0}, {"checkpoint_every": 1.5}, {"checkpoint_every": None}])
def test_bad_conversation(session, kw):
    error_of(Conversation, session, **kw)


@pytest.mark.parametrize("tokens", [None, [1], {0: "a"}, {0: 1.5}, {0: True}, {0: 256}, {0: -1}])
def test_bad_batch_steps_leave_the_batch_usable(session, tokens):
    dec = BatchDecoder(session, 2)
    slot = dec.add(session.new_state(1))
    error_of(dec.step, tokens)
    assert len(dec) == 1
    logits = dec.step({slot: 65})
    want, _ = session.forward(np.array([[65]]), session.new_state(1))
    assert np.allclose(logits[slot], want[0, 0], atol=1e-5)


@pytest.mark.parametrize("max_batch", [0, -1, 1.5, True, None, 10 ** 6])
def test_bad_max_batch(session, max_batch):
    error_of(BatchDecoder, session, max_batch)


@pytest.mark.parametrize("state", [{}, "x", None, 5])
def test_bad_rows(session, state):
    error_of(BatchDecoder(session).add, state)


def test_drafter_proposing_junk_is_not_trusted(session):
    class Junk:
        def propose(self, context, k, sampling, rng):
            return [300, -4], None  # outside the vocabulary: the target's forward refuses them

    error_of(lambda: list(speculative_generate(session, Junk(), [1, 2, 3], 8, speculate="always")))
    assert list(speculative_generate(session, PromptLookupDrafter(), [1, 2, 1, 2], 8)) == list(generate(session, [1, 2, 1, 2], 8))
