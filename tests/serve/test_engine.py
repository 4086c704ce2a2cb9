"""The serving engine: batched, cached and speculative requests give the single-stream greedy text."""
import queue

import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import ByteTokenizer, ModelDrafter, PromptLookupDrafter, SamplingConfig, Session, generate
from edgelin.serve import Engine, EngineConfig, Failed, Finished, GenerationRequest, RequestError, TextDelta
from edgelin.serve.chat import Message, encode_chat
from serve_helpers import wait_idle

GREEDY = SamplingConfig(temperature=0.0)
TOK = ByteTokenizer()


@pytest.fixture
def session(pkg):
    return Session(pkg, threads=1)


def expected(session, ids, n):
    return TOK.decode(list(generate(session, ids, n)))


def collect(engine, requests):
    """Submit every request at once; (text, Finished) of each, in order."""
    sinks = [queue.SimpleQueue() for _ in requests]
    for r, sink in zip(requests, sinks):
        engine.submit(r, sink.put)
    out = []
    for sink in sinks:
        text = []
        while not isinstance(event := sink.get(timeout=60), (Finished, Failed)):
            text.append(event.text)
        assert isinstance(event, Finished), event
        out.append(("".join(text), event))
    return out


def test_concurrent_requests_equal_single_streams(session):
    engine = Engine(session, TOK, EngineConfig(max_batch=3, checkpoint_every=8))
    system = list(b"You are a helpful assistant who answers briefly. ")
    prompts = [system + list(q) for q in (b"Hi", b"What is the sea?", b"Count to three", b"Hi")] + [list(b"x"), list(b"abc" * 9)]
    lengths = [12, 20, 7, 12, 16, 9]
    results = collect(engine, [GenerationRequest(p, n, GREEDY) for p, n in zip(prompts, lengths)])
    for (text, done), p, n in zip(results, prompts, lengths):
        assert text == expected(session, p, n)
        assert (done.reason, done.prompt_tokens, done.completion_tokens) == ("length", len(p), n)
    assert results[3][1].cached_tokens == len(prompts[3])  # the same prompt again: nothing to prefill
    stats = wait_idle(engine)
    assert stats["completed"] == 6 and stats["failed"] == 0 and stats["cache"]["hits"] == 3  # 1, 2 and 3 reuse the system prompt
    engine.close()


def test_next_chat_turn_resumes_after_the_reply(trained_pkg):
    session = Session(trained_pkg, threads=1)
    engine = Engine(session, TOK)
    turn = [Message("system", "Be brief."), Message("user", "Hello there")]
    ids, ends = encode_chat(TOK, turn)
    [(reply, done)] = collect(engine, [GenerationRequest(ids, 10, GREEDY, marks=tuple(ends))])
    assert reply == expected(session, ids, 10) and TOK.encode(reply) == list(generate(session, ids, 10))
    ids2, ends2 = encode_chat(TOK, [*turn, Message("assistant", reply), Message("user", "And then?")])
    [(reply2, done2)] = collect(engine, [GenerationRequest(ids2, 10, GREEDY, marks=tuple(ends2))])
    assert done2.cached_tokens == len(ids) + 10 - 1  # everything the first request fed
    assert reply2 == expected(session, ids2, 10)
    engine.close()


def test_stop_sequence_cuts_the_text(session):
    engine = Engine(session, TOK)
    prompt = list(b"The quality of mercy")
    full = expected(session, prompt, 30)
    stop = full[12:15]
    [(text, done)] = collect(engine, [GenerationRequest(prompt, 30, GREEDY, stop=(stop, "\x00never"))])
    assert text == full[:full.index(stop)] and done.reason == "stop"
    engine.close()


@pytest.mark.parametrize("drafter", ["lookup", "model"])
def test_lone_request_decodes_speculatively_and_rejoins_the_batch(session, drafter):
    draft = PromptLookupDrafter() if drafter == "lookup" else ModelDrafter(session)
    engine = Engine(session, TOK, EngineConfig(drafter=draft, speculate="always"))
    first, second = list(b"abcabcabcabc to be or not"), list(b"Now is the winter")
    sink = queue.SimpleQueue()
    engine.submit(GenerationRequest(first, 200, GREEDY), sink.put)
    text = [sink.get(timeout=60).text]  # decoding alone now
    [(other, _)] = collect(engine, [GenerationRequest(second, 20, GREEDY)])  # it goes back into the batch
    while not isinstance(event := sink.get(timeout=60), Finished):
        text.append(event.text)
    assert "".join(text) == expected(session, first, 200)
    assert other == expected(session, second, 20)
    stats = wait_idle(engine)
    assert stats["completed"] == 2 and stats["accepted_tokens"] > 0
    engine.close()


def test_cancel_timeout_and_full_queue(session):
    engine = Engine(session, TOK, EngineConfig(max_batch=1, max_queue=1, request_timeout=0.3))
    sink, long = queue.SimpleQueue(), GenerationRequest(list(b"hello"), 4096, GREEDY)
    handle = engine.submit(long, sink.put)
    assert isinstance(sink.get(timeout=30), TextDelta)
    handle.cancel()
    wait_idle(engine)
    assert engine.stats()["cancelled"] == 1
    timed = queue.SimpleQueue()
    engine.submit(long, timed.put)
    while not isinstance(event := timed.get(timeout=30), (Finished, Failed)):
        pass
    assert isinstance(event, Failed) and event.error.status == 504
    busy = []
    for _ in range(3):
        try:
            engine.submit(long, lambda e: None)
        except RequestError as e:
            busy.append(e.status)
    assert busy and set(busy) == {503}
    engine.close()
    with pytest.raises(RequestError, match="shutting down"):
        engine.submit(long, lambda e: None)


def test_requests_the_engine_refuses(session):
    engine = Engine(session, TOK, EngineConfig(max_prompt_tokens=16, max_tokens=8))
    for request, status in [(GenerationRequest([], 4), 400), (GenerationRequest([1] * 17, 4), 400),
                            (GenerationRequest([1, 300], 4), 400), (GenerationRequest([1], 9), 400)]:
        with pytest.raises(RequestError) as e:
            engine.submit(request, lambda e: None)
        assert e.value.status == status and e.value.message
    engine.close()
    with pytest.raises(EdgelinError, match="max_batch"):
        EngineConfig(max_batch=0)
    with pytest.raises(EdgelinError, match="speculate"):
        EngineConfig(speculate="sometimes")


def test_stream_from_python(session):
    engine = Engine(session, TOK)
    prompt = list(b"Once upon")
    assert "".join(engine.stream(GenerationRequest(prompt, 9, GREEDY))) == expected(session, prompt, 9)
    engine.close()
