"""The serving engine: one thread prefills, batches and decodes every request (continuous batching).

Requests wait in a bounded queue; up to `max_batch` are in flight. Each loop iteration feeds at most
one prefill chunk of one new request (through the prompt-state cache) and then one decode step of
every request already decoding, as one batch; a request joins the batch when its prompt is in and
leaves it when it finishes, is cancelled or times out, freeing its slot. With a drafter, a request
that decodes alone is decoded speculatively, and goes back into the batch when others arrive.
Results are events sent to the request's `sink` from the engine thread.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.batch import BatchDecoder
from edgelin.runtime.prefix_cache import Prefill, PrefixCache
from edgelin.runtime.sampling import GREEDY, SamplingConfig, sample
from edgelin.runtime.session import Session
from edgelin.runtime.speculative import Drafter, SpeculativeGeneration
from edgelin.runtime.tokenizer import StreamDecoder, Tokenizer
from edgelin.serve.schema import RequestError

log = logging.getLogger("edgelin.serve")


@dataclass(frozen=True)
class EngineConfig:
    """Limits and policies of an Engine.

    Args:
        max_batch: requests in flight at once (prefilling or decoding); the rest wait in the queue.
        max_queue: requests that may wait; more are refused (503).
        cache_bytes: prompt-state cache budget (0: no cache).
        spill_dir: where evicted cache entries go on disk (None: dropped).
        spill_bytes: disk budget of the spilled entries.
        checkpoint_every: also checkpoint prompts every this many tokens (rounded to the prefill chunk; 0: off).
        request_timeout: seconds a request may take from submission to its last token.
        max_prompt_tokens: longest prompt accepted.
        max_tokens: most tokens one request may generate.
        drafter: decode a request that runs alone speculatively with this drafter (None: never).
        speculate: "auto" (verify drafts when the measured timings say it pays) or "always".
    """

    max_batch: int = 8
    max_queue: int = 64
    cache_bytes: int = 256 << 20
    spill_dir: str | None = None
    spill_bytes: int = 1 << 30
    checkpoint_every: int = 512
    request_timeout: float = 300.0
    max_prompt_tokens: int = 8192
    max_tokens: int = 4096
    drafter: Drafter | None = None
    speculate: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "cache_bytes", "spill_bytes", "checkpoint_every", "max_prompt_tokens",
                     "max_tokens"):
            v = getattr(self, name)
            low = 1 if name in ("max_batch", "max_queue", "max_prompt_tokens", "max_tokens") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise EdgelinError(f"{name} must be an integer >= {low}, not {v!r:.40}")
        if isinstance(self.request_timeout, bool) or not isinstance(self.request_timeout, (int, float)) \
                or not 0 < self.request_timeout < float("inf"):
            raise EdgelinError(f"request_timeout must be a number of seconds > 0, not {self.request_timeout!r:.40}")
        if self.drafter is not None and not callable(getattr(self.drafter, "propose", None)):
            raise EdgelinError(f"drafter must have a propose() method (a Drafter), not {type(self.drafter).__name__}")
        if self.speculate not in ("auto", "always"):
            raise EdgelinError(f"speculate must be 'auto' or 'always', not {self.speculate!r:.40}")


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompt token ids, how many tokens at most, how to sample, when to stop.

    `marks` are prompt positions to checkpoint in the prefix cache (where chat messages end).
    """

    prompt: Sequence[int]
    max_tokens: int
    sampling: SamplingConfig = GREEDY
    seed: int | None = None
    stop: tuple[str, ...] = ()
    marks: tuple[int, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """Generated text (whole characters), in order."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The request is complete: why ("stop" or "length") and how many tokens went in and out."""

    reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Failed:
    """The request ended without completing (timeout, shutdown, a failure of the model)."""

    error: RequestError


Event = TextDelta | Finished | Failed


@dataclass
class _Job:
    request: GenerationRequest
    sink: Callable[[Event], None]
    deadline: float
    stop_ids: set[int]
    decoder: StreamDecoder
    tokens: list[int]  # the prompt, then every token sampled; the last one is not in the state yet
    rng: np.random.Generator
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: bool = False
    prefill: Prefill | None = None
    slot: int | None = None
    spec: SpeculativeGeneration | None = None
    logits: np.ndarray | None = None  # the logits that chose tokens[-1] (None when not known)
    generated: int = 0
    cached: int = 0
    held: str = ""  # text held back: it may be the start of a stop sequence


class Handle:
    """A submitted request: `cancel()` stops it (its slot is freed at the next engine step)."""

    def __init__(self, job: _Job, engine: "Engine") -> None:
        self._job, self._engine = job, engine

    @property
    def id(self) -> str:
        """The request's id (unique per engine)."""
        return self._job.id

    def cancel(self) -> None:
        """Stop the request; safe from any thread, and after it finished."""
        self._job.cancelled = True
        self._engine._wake()


class Engine:
    """Serve one package to many concurrent requests from one engine thread.

    Args:
        session: the package (its batch axis carries the concurrent requests).
        tokenizer: the package's tokenizer (text out, stop sequences, eos).
        config: limits and policies.
    Example:
        >>> engine = Engine(Session("pkg"), load_tokenizer("pkg", manifest))  # doctest: +SKIP
        >>> print("".join(engine.stream(GenerationRequest(tok.encode("To be"), 32))))
        >>> engine.close()
    """

    def __init__(self, session: Session, tokenizer: Tokenizer, config: EngineConfig = EngineConfig()) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        if not isinstance(config, EngineConfig):
            raise EdgelinError(f"config must be an EngineConfig, not {type(config).__name__}")
        self.session, self.tokenizer, self.config = session, tokenizer, config
        self.cache = PrefixCache(session, config.cache_bytes, spill_dir=config.spill_dir,
                                 spill_bytes=config.spill_bytes) if config.cache_bytes else None
        chunk = session.prefill_tokens
        self._every = max(chunk, round(config.checkpoint_every / chunk) * chunk) if config.checkpoint_every else None
        self._batch = BatchDecoder(session, config.max_batch)
        self._queue: deque[_Job] = deque()
        self._prefilling: list[_Job] = []
        self._decoding: list[_Job] = []
        self._cv = threading.Condition()
        self._closing = False
        self.counters = {"completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0, "generated_tokens": 0,
                         "drafted_tokens": 0, "accepted_tokens": 0}
        self._thread = threading.Thread(target=self._run, name="edgelin-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread ----

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None], timeout: float | None = None) -> Handle:
        """Queue `request`; its events go to `sink` (called from the engine thread).

        Raises:
            RequestError: 400 for a prompt that is empty or too long, 503 when the queue is full or the
                engine is closing.
        """
        prompt = list(request.prompt)
        if not prompt:
            raise RequestError(400, "the prompt is empty", param="prompt")
        if len(prompt) > self.config.max_prompt_tokens:
            raise RequestError(400, f"the prompt is {len(prompt)} tokens; this server takes at most "
                               f"{self.config.max_prompt_tokens}", param="prompt", code="context_length_exceeded")
        if any(not 0 <= t < self.session.vocab_size for t in prompt):
            raise RequestError(400, f"the prompt holds a token id outside the vocabulary [0, {self.session.vocab_size})",
                               param="prompt")
        cap = self.session.manifest.raw.get("max_context")
        if cap and len(prompt) + request.max_tokens > cap:
            raise RequestError(400, f"the prompt ({len(prompt)} tokens) and max_tokens ({request.max_tokens}) exceed this "
                               f"model's context of {cap} tokens", param="max_tokens", code="context_length_exceeded")
        if not 1 <= request.max_tokens <= self.config.max_tokens:
            raise RequestError(400, f"max_tokens must be in [1, {self.config.max_tokens}]", param="max_tokens")
        wait = self.config.request_timeout if timeout is None else min(timeout, self.config.request_timeout)
        stop_ids = {self.tokenizer.eos_id} if self.tokenizer.eos_id is not None else set()
        job = _Job(request, sink, time.monotonic() + wait, stop_ids, self.tokenizer.stream_decoder(), prompt,
                   np.random.default_rng(request.seed))
        with self._cv:
            if self._closing:
                raise RequestError(503, "the server is shutting down", kind="server_error")
            if len(self._queue) >= self.config.max_queue:
                raise RequestError(503, f"the server is busy ({self.config.max_queue} requests waiting); retry later",
                                   kind="server_error", code="server_busy")
            self._queue.append(job)
            self._cv.notify()
        return Handle(job, self)

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Submit `request` and yield its text as it comes (blocking); a failure raises RequestError."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        handle = self.submit(request, events.put)
        try:
            while True:
                event = events.get()
                if isinstance(event, TextDelta):
                    yield event.text
                elif isinstance(event, Failed):
                    raise event.error
                else:
                    return
        finally:
            handle.cancel()

    def stats(self) -> dict[str, object]:
        """Queue and batch occupancy, cache figures and request counters."""
        with self._cv:
            out = {"queued": len(self._queue), "prefilling": len(self._prefilling), "decoding": len(self._decoding),
                   "batch_rows": len(self._batch), **self.counters}
        if self.cache is not None:
            c = self.cache.stats
            out["cache"] = {"entries": c.entries, "bytes": c.bytes, "spilled_entries": c.spilled_entries,
                            "hits": c.hits, "misses": c.misses, "hit_tokens": c.hit_tokens}
        return out

    def close(self) -> None:
        """Stop the engine thread; requests still queued or running fail with 503."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        if self.cache is not None:
            self.cache.close()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # ---- the engine thread ----

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not (self._queue or self._prefilling or self._decoding):
                    self._cv.wait()
                if self._closing:
                    break
                self._reap_queue()
                while self._queue and len(self._prefilling) + len(self._decoding) < self.config.max_batch:
                    self._prefilling.append(self._queue.popleft())
            try:
                self._iteration()
            except Exception:  # a bug must not take the server down: fail what was in flight, keep serving
                log.exception("engine step failed")
                failed, self._prefilling, self._decoding = self._prefilling + self._decoding, [], []
                self._batch = BatchDecoder(self.session, self.config.max_batch)
                for job in failed:
                    job.slot = job.spec = job.prefill = None
                    self._fail(job, RequestError(500, "the model failed while serving this request", kind="server_error"))
        with self._cv:
            gone = list(self._queue) + self._prefilling + self._decoding
            self._queue.clear()
        for job in gone:
            self._fail(job, RequestError(503, "the server is shutting down", kind="server_error"))

    def _reap_queue(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._queue if j.cancelled or now > j.deadline]:
            self._queue.remove(job)
            self._drop(job, now)

    def _drop(self, job: _Job, now: float) -> bool:
        """End a cancelled or timed-out job; False if it is neither."""
        if job.cancelled:
            self._release(job)
            self.counters["cancelled"] += 1
            return True
        if now > job.deadline:
            self._fail(job, RequestError(504, f"the request took longer than {self.config.request_timeout:g} s",
                                         kind="timeout_error", code="timeout"))
            self.counters["timed_out"] += 1
            return True
        return False

    def _iteration(self) -> None:
        now = time.monotonic()
        self._prefilling = [j for j in self._prefilling if not self._drop(j, now)]
        self._decoding = [j for j in self._decoding if not self._drop(j, now)]
        if self._prefilling:
            self._prefill_step(self._prefilling[0])
        lone = len(self._decoding) == 1 and not self._prefilling and not self._queue
        if lone and self.config.drafter is not None:
            self._speculative_step(self._decoding[0])
        elif self._decoding:
            self._batch_step()

    def _prefill_step(self, job: _Job) -> None:
        try:
            if job.prefill is None:
                job.prefill = Prefill(self.session, job.tokens, self.cache, marks=job.request.marks, every=self._every)
            done = job.prefill.step(self.session.prefill_tokens)
        except EdgelinError as e:
            self._prefilling.remove(job)
            self._fail(job, RequestError(500, f"the model failed on this prompt: {e}", kind="server_error"))
            return
        if not done:
            return
        self._prefilling.remove(job)
        prefill, job.prefill = job.prefill, None
        job.cached, job.logits = prefill.reused, prefill.logits
        if self._emit(job, int(sample(prefill.logits[None], job.request.sampling, job.rng)[0])):
            job.slot = self._batch.add(prefill.state)
            self._decoding.append(job)

    def _batch_step(self) -> None:
        for job in self._decoding:
            if job.spec is not None:  # back from decoding alone: its state rejoins the batch
                job.slot, job.spec, job.logits = self._batch.add(job.spec.state), None, None
        logits = self._batch.step({job.slot: job.tokens[-1] for job in self._decoding})
        for job in list(self._decoding):
            job.logits = logits[job.slot]
            if not self._emit(job, int(sample(job.logits[None], job.request.sampling, job.rng)[0])):
                self._decoding.remove(job)

    def _speculative_step(self, job: _Job) -> None:
        if job.spec is None:
            state = self._batch.remove(job.slot)
            job.slot, job.logits = None, None
            job.spec = SpeculativeGeneration(
                self.session, self.config.drafter, np.array(job.tokens[-1:], np.int64),
                job.request.max_tokens - job.generated, job.request.sampling, job.rng, state, job.stop_ids,
                None, self.config.speculate == "always", context=job.tokens[:-1])
        before = job.spec.stats.drafted, job.spec.stats.accepted
        tokens = job.spec.step()
        self.counters["drafted_tokens"] += job.spec.stats.drafted - before[0]
        self.counters["accepted_tokens"] += job.spec.stats.accepted - before[1]
        for token in tokens:
            if not self._emit(job, token):
                self._decoding.remove(job)
                return
        if job.spec.done:  # it sampled a stop id, which it does not yield
            self._decoding.remove(job)
            self._emit(job, job.spec.pending[0])

    def _emit(self, job: _Job, token: int) -> bool:
        """Take a sampled token: send its text, finish the job on a stop or at max_tokens. False when finished."""
        job.tokens.append(token)
        if token in job.stop_ids:
            self._finish(job, "stop")
            return False
        job.generated += 1
        self.counters["generated_tokens"] += 1
        last = job.generated == job.request.max_tokens
        job.held += job.decoder.push(token) + (job.decoder.flush() if last else "")
        stops = job.request.stop
        hit = min((i for i in (job.held.find(s) for s in stops) if i >= 0), default=-1)
        if hit >= 0:
            self._send(job, job.held[:hit])
            self._finish(job, "stop")
            return False
        keep = 0 if last else max((n for s in stops for n in range(1, len(s)) if job.held.endswith(s[:n])), default=0)
        self._send(job, job.held[:len(job.held) - keep])
        job.held = job.held[len(job.held) - keep:]
        if last:
            self._finish(job, "length")
        return not last

    def _send(self, job: _Job, text: str) -> None:
        if text:
            self._deliver(job, TextDelta(text))

    def _finish(self, job: _Job, reason: str) -> None:
        state = self._release(job)
        if state is not None and self.cache is not None and job.logits is not None:
            self.cache.put(job.tokens[:-1], state, job.logits)  # the next turn of a chat resumes here
        self.counters["completed"] += 1
        self._deliver(job, Finished(reason, len(job.request.prompt), job.generated, job.cached))

    def _fail(self, job: _Job, error: RequestError) -> None:
        self._release(job)
        self.counters["failed"] += 1
        self._deliver(job, Failed(error))

    def _release(self, job: _Job) -> dict | None:
        """Free the job's batch slot (its state is returned) and whatever else it holds."""
        job.prefill = job.spec = None
        if job.slot is None:
            return None
        state, job.slot = self._batch.remove(job.slot), None
        return state

    def _deliver(self, job: _Job, event: Event) -> None:
        try:
            job.sink(event)
        except Exception:  # the receiver is gone (its event loop closed): nobody is listening
            job.cancelled = True
