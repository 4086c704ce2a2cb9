"""Prompt-state cache, rewind and batched decoding equal fresh single-stream runs, for every zoo family.

Each tiny zoo model (hybrid-tiny has sliding-window attention of window 16; the sequences here are
longer) is exported in FP32 with a prefill chunk of 8. "Equal" is logits within 1e-4 (relative to
their size where that is above 1) and identical greedy tokens.
"""
import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.models import ZOO
from edgelin.runtime import BatchDecoder, Conversation, PrefixCache, Session, generate, prefill

TINY = [name for name in ZOO if name.endswith("-tiny")]
V = 256


def assert_close(a, b):
    worst = np.abs(np.asarray(a, np.float64) - b).max() / max(1.0, np.abs(b).max())
    assert worst <= 1e-4, f"max relative difference {worst:.2e}"


def fresh(session, ids):
    """Last-position logits and state of `ids` fed from zeros in one forward call."""
    logits, state = session.forward(np.asarray(ids, np.int64)[None], session.new_state(1), logits="last")
    return logits[0, -1], state


def ids(seed, n):
    return np.random.default_rng(seed).integers(0, V, n)


@pytest.fixture(params=TINY)
def session(request, zoo_package):
    return Session(zoo_package(request.param), threads=1)


def test_cached_prefix_equals_fresh_prefill(session):
    system, q1, q2 = ids(0, 21), ids(1, 11), ids(2, 13)
    cache = PrefixCache(session)
    first = prefill(session, np.concatenate([system, q1]), cache, marks=[len(system)], every=8)
    assert first.reused == 0
    assert_close(first.logits, fresh(session, np.concatenate([system, q1]))[0])
    prompt = np.concatenate([system, q2])
    second = prefill(session, prompt, cache)
    assert second.reused == len(system)  # resumed at the end of the system prompt
    want_logits, want_state = fresh(session, prompt)
    assert_close(second.logits, want_logits)
    for name, a in second.state.items():
        assert_close(a, want_state[name])
    first_token = int(second.logits.argmax())
    assert [first_token, *generate(session, [first_token], 23, state=second.state)] == list(generate(session, prompt, 24))
    again = prefill(session, prompt, cache)  # the whole prompt is cached now: nothing is fed
    assert again.reused == len(prompt) and np.array_equal(again.logits, second.logits)


def test_rewind_equals_fresh(session):
    chat = Conversation(session, checkpoint_every=8)
    chat.feed(ids(3, 19))
    generated = list(chat.generate(24))
    whole = chat.tokens
    assert whole[19:] == generated and chat.position == 43
    for position in (27, 16, 5, 1):  # between checkpoints, on one, before the first, the first token
        chat.rewind(position)
        want_logits, want_state = fresh(session, whole[:position])
        assert chat.position == position
        assert_close(chat.logits, want_logits)
        for name, a in chat.state.items():
            assert_close(a, want_state[name])
        again = list(chat.generate(6))
        assert again == list(generate(session, whole[:position], 6))
    chat.rewind(0)
    assert chat.position == 0 and chat.logits is None


def test_batched_sessions_equal_single_streams(session):
    """Four sequences through a batch of at most 3: two start, one joins later, one leaves early and
    frees its slot for the fourth."""
    prompts = [ids(10 + i, n) for i, n in enumerate((5, 19, 12, 9))]
    lengths = [14, 6, 10, 8]
    joins = {0: [0, 1], 3: [2], 7: [3]}  # step -> sequences joining before it
    dec = BatchDecoder(session, max_batch=3)
    seq_of, out, pending, last_logits = {}, {}, {}, {}
    for step in range(20):
        for i in joins.get(step, []):
            p = prefill(session, prompts[i])
            slot = dec.add(p.state)
            seq_of[slot], out[i], pending[slot] = i, [int(p.logits.argmax())], int(p.logits.argmax())
        if not len(dec):
            break
        logits = dec.step(pending)
        for slot, row in logits.items():
            i = seq_of[slot]
            out[i].append(int(row.argmax()))
            pending[slot], last_logits[i] = out[i][-1], row
            if len(out[i]) == lengths[i]:
                state = dec.remove(slot)
                del pending[slot]
                want_logits, want_state = fresh(session, np.concatenate([prompts[i], out[i][:-1]]))
                assert_close(last_logits[i], want_logits)
                for name, a in state.items():
                    assert_close(a, want_state[name])
    assert len(dec) == 0 and dec.slots == []
    for i, prompt in enumerate(prompts):
        assert out[i] == list(generate(session, prompt, lengths[i])), f"sequence {i}"


def test_cache_evicts_least_recent_by_bytes_and_spills(tmp_path, zoo_package):
    session = Session(zoo_package("gla-tiny"), threads=1)
    one = PrefixCache(session)
    one.put([1, 2, 3], session.new_state(1), np.zeros(V, np.float32))
    entry = one.stats.bytes
    cache = PrefixCache(session, max_bytes=2 * entry + entry // 2, spill_dir=tmp_path, spill_bytes=10 * entry)
    prompt = ids(20, 24)
    prefill(session, prompt, cache, every=8)  # checkpoints at 8, 16 and 24: the oldest is spilled
    stats = cache.stats
    assert (stats.entries, stats.spilled_entries, stats.evictions) == (2, 1, 1)
    spilled = list(tmp_path.rglob("*.state.npz"))
    assert len(spilled) == 1 and spilled[0].name.startswith("8-")
    other = np.concatenate([prompt[:10], ids(21, 5)])
    hit = prefill(session, other, cache)
    assert hit.reused == 8  # read back from disk, and back in memory: the least recent ones went out
    assert_close(hit.logits, fresh(session, other)[0])
    assert sorted(p.name.split("-")[0] for p in tmp_path.rglob("*.state.npz")) == ["16", "24"]
    cache.close()
    assert not list(tmp_path.iterdir())


def test_damaged_spill_file_is_a_miss(tmp_path, zoo_package):
    session = Session(zoo_package("gla-tiny"), threads=1)
    prompt, logits = ids(22, 16), np.zeros(V, np.float32)
    probe = PrefixCache(session)
    probe.put(prompt[:12], session.new_state(1), logits)
    cache = PrefixCache(session, max_bytes=probe.stats.bytes * 3 // 2, spill_dir=tmp_path)
    cache.put(prompt[:8], fresh(session, prompt[:8])[1], logits)
    cache.put(prompt[:12], fresh(session, prompt[:12])[1], logits)  # spills the first
    (path,) = tmp_path.rglob("*.state.npz")
    path.write_bytes(b"not a snapshot")
    assert cache.longest(prompt[:10]) is None
    assert cache.stats.spilled_entries == 0 and len(cache) == 1


def test_batch_refuses_what_it_cannot_do(zoo_package):
    session = Session(zoo_package("gla-tiny"), threads=1)
    dec = BatchDecoder(session, max_batch=1)
    with pytest.raises(EdgelinError, match="nothing to step"):
        dec.step({})
    slot = dec.add(session.new_state(1))
    with pytest.raises(EdgelinError, match="batch is full"):
        dec.add(session.new_state(1))
    with pytest.raises(EdgelinError, match="one token for every slot"):
        dec.step({slot: 1, slot + 1: 2})
    with pytest.raises(EdgelinError, match="no sequence with slot 99"):
        dec.remove(99)
    with pytest.raises(EdgelinError, match="batch 1"):
        BatchDecoder(session, 2).add(session.new_state(2))
    dec.remove(slot)
    assert len(dec) == 0
    chat = Conversation(session)
    with pytest.raises(EdgelinError, match="feed at least one token"):
        next(chat.generate(3))
    with pytest.raises(EdgelinError, match="position must be an integer in \\[0, 0\\]"):
        chat.rewind(1)


def test_batch_on_a_batch_1_profile_steps_rows_one_by_one(tmp_path, zoo_package):
    """A package exported for a fixed batch of 1 (here the openvino-npu profile, run by ORT) cannot take
    the rows together: the decoder steps them one after another, with the same results."""
    from edgelin.exporters.profiles import apply_profile

    fixed = Session(apply_profile(zoo_package("gla-tiny"), "openvino-npu", tmp_path / "npu"), threads=1)
    assert fixed.batch == 1
    dec = BatchDecoder(fixed, max_batch=2)
    assert not dec.vectorized
    prompts = [ids(30, 11), ids(31, 6)]
    slots = [dec.add(prefill(fixed, p).state) for p in prompts]
    tokens = {slot: int(p[-1]) for slot, p in zip(slots, prompts)}
    logits = dec.step(tokens)
    for slot, p in zip(slots, prompts):
        assert_close(logits[slot], fresh(fixed, np.append(p, p[-1]))[0])


def test_stateful_back_end_batches_rows_and_rewinds(tmp_path, zoo_package):
    """openvino-stateful keeps one live state inside the graph (batch 1): rows take turns, each one's
    state copied out when another runs; a conversation rewinds on it like on ORT."""
    pytest.importorskip("openvino")
    import shutil

    from edgelin.exporters.openvino import export_openvino

    pkg = export_openvino(shutil.copytree(zoo_package("hybrid-tiny"), tmp_path / "ov"), variants=("stateful",))
    ov, ort = Session(pkg, backend="openvino-stateful", threads=1), Session(pkg, threads=1)
    dec = BatchDecoder(ov, max_batch=2)
    assert not dec.vectorized
    prompts = [ids(40, 13), ids(41, 21)]
    slots, out = [], {}
    for p in prompts:
        job = prefill(ov, p)
        slots.append(dec.add(job.state))
        out[slots[-1]] = [int(job.logits.argmax())]
    for _ in range(8):
        for slot, row in dec.step({s: out[s][-1] for s in slots}).items():
            out[slot].append(int(row.argmax()))
    for slot, p in zip(slots, prompts):
        assert out[slot] == list(generate(ort, p, 9))
    chat = Conversation(ov, checkpoint_every=8)
    chat.feed(prompts[1])
    generated = list(chat.generate(12))
    chat.rewind(25)
    assert_close(chat.logits, fresh(ort, (list(prompts[1]) + generated)[:25])[0])


def test_donated_steps_equal_plain_steps(session):
    """`forward(donate=True)` writes each window ring's new slot into the given arrays (ONNX Runtime's
    decode graph): the logits and states are bit for bit those of plain steps, through the ring's
    wrap (48 steps, window 16), from two rows that have seen different numbers of tokens."""
    rows = [fresh(session, ids(20 + r, n))[1] for r, n in enumerate((5, 27))]
    start = {k: np.concatenate([rows[0][k], rows[1][k]]) for k in rows[0]}
    plain, donated = start, {k: v.copy() for k, v in start.items()}
    rings = [k for k in start if k.endswith((".key", ".value")) and k.rsplit(".", 1)[0] + ".seen" in start]
    for t in range(48):
        tokens = np.array([[t % V], [(t * 7) % V]], np.int64)
        want, plain = session.forward(tokens, plain, logits="last")
        before = dict(donated)
        got, donated = session.forward(tokens, donated, logits="last", donate=True)
        assert np.array_equal(got, want)
        assert all(donated[k] is before[k] for k in rings), "a ring was copied, not written in place"
        for k in plain:
            assert np.array_equal(donated[k], plain[k]), k


def test_a_state_read_from_a_generation_is_never_written(session):
    """A generation writes its rings in place only while nobody holds its state: one read through
    `state` keeps the arrays read as they were, and the tokens match a generation read at every step."""
    prompt = ids(30, 11)
    reference = list(generate(session, prompt, 30))
    g = generate(session, prompt, 30)
    head = [next(g) for _ in range(5)]
    kept = g.state
    frozen = {k: v.copy() for k, v in kept.items()}
    assert head + list(g) == reference
    for k, v in kept.items():
        assert np.array_equal(v, frozen[k]), k


def test_donate_must_be_a_bool(session):
    with pytest.raises(EdgelinError, match="donate"):
        session.forward(np.array([[1]]), session.new_state(1), donate="yes")
