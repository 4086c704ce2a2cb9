"""Speculative decoding: a drafter proposes tokens, the target verifies them in one pass.

Design (docs/DESIGN.md, "The verify graph"): a package's verify graph runs K decode steps in one
run (the decode graph's arithmetic and quantization, the per-token products batched over the K
positions) and returns the logits of every position and the state after every position. A pass
feeds `[pending] + drafts` (padded to K) from the current state; the state of the accepted prefix is
then one of the pass's outputs: nothing is replayed, and the output at temperature 0 is that of
plain decoding, in quantized packages too.

Packages without a verify graph (exported with `--verify-tokens 0`, or a back end that cannot run
it) verify through the prefill graph instead: a fixed chunk of K tokens that returns the logits of
every position but only the state after the last. A pass feeds `debt + [pending] + drafts`, padded
to K, from the last state known exact; the logits of the real positions are exact (the graphs are
causal), the final state only when the chunk holds K real tokens that were all accepted. Accepted
tokens not yet in the state (the debt) ride along at the front of the next pass.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.generate import check_generation_args
from edgelin.runtime.prefix_cache import PrefixCache, prefill, token_array
from edgelin.runtime.sampling import GREEDY, SamplingConfig, probabilities, sample
from edgelin.runtime.session import Session, State


class Drafter(Protocol):
    """Proposes tokens to follow a context; the target decides which to keep.

    Optional attributes the "auto" policy reads: `free` (True: proposing costs next to nothing, so the
    policy looks at a proposal before deciding whether to verify it) and `level` (set by `propose`: a
    small int saying how sure the proposal is, e.g. the length of the n-gram prompt lookup matched;
    the policy learns how often drafts of each level are kept).
    """

    def propose(self, context: np.ndarray, k: int, sampling: SamplingConfig,
                rng: np.random.Generator) -> tuple[list[int], np.ndarray | None]:
        """Up to `k` tokens to follow `context` (1-D ids, the last one just sampled), and the distribution
        each was drawn from ([n, vocab]), or None when the proposal is deterministic."""
        ...


class PromptLookupDrafter:
    """Drafts by copying what followed the latest earlier occurrence of the context's last n-gram.

    Prompt lookup decoding: free to run, good on text that repeats its prompt (code edits,
    summaries, a small model's loops). Tries n = max_ngram down to min_ngram.

    Example:
        >>> PromptLookupDrafter().propose(np.array([5, 6, 7, 1, 5, 6]), 3, GREEDY, rng)[0]  # doctest: +SKIP
        [7, 1, 5]
    """

    free = True  # a proposal costs a few array operations
    level = 0  # the n of the n-gram the last proposal matched (0: none)

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) for n in (max_ngram, min_ngram)) \
                or not 1 <= min_ngram <= max_ngram <= 64:
            raise EdgelinError(f"n-gram sizes must be integers with 1 <= min_ngram <= max_ngram <= 64, "
                               f"not {min_ngram!r:.20} and {max_ngram!r:.20}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: np.ndarray, k: int, sampling: SamplingConfig,
                rng: np.random.Generator) -> tuple[list[int], None]:
        ctx = np.asarray(context)
        for n in range(min(self.max_ngram, len(ctx) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(ctx[:-1], n)
            starts = np.flatnonzero((windows == ctx[-n:]).all(axis=1))
            if starts.size:
                after = int(starts[-1]) + n
                self.level = n
                return ctx[after:after + k].tolist(), None
        self.level = 0
        return [], None


class ModelDrafter:
    """Drafts with a smaller model of the same vocabulary (gla-1m for gla-10m, say).

    It keeps its own state in step with the context it is shown: the states after each token it
    drafted are kept, so taking back rejected drafts costs nothing; a context it has not seen is
    prefilled through its own prefix cache.

    Args:
        session: the draft package (same tokenizer and vocabulary as the target).
        cache_bytes: budget of the draft's prefix cache.
    Example:
        >>> drafter = ModelDrafter(Session("out/gla-1m-int8"))  # doctest: +SKIP
        >>> g = speculative_generate(Session("out/gla-10m"), drafter, ids, 128)
    """

    def __init__(self, session: Session, cache_bytes: int = 32 << 20) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"the draft model must be a Session, not {type(session).__name__}")
        self.session, self.cache = session, PrefixCache(session, cache_bytes)
        self._tokens = np.zeros(0, np.int64)  # what the kept states cover
        self._trail: dict[int, tuple[State, np.ndarray]] = {}  # position -> (state, next-token logits)

    def propose(self, context: np.ndarray, k: int, sampling: SamplingConfig,
                rng: np.random.Generator) -> tuple[list[int], np.ndarray | None]:
        ctx = np.asarray(context, np.int64)
        same = _common_prefix(self._tokens, ctx)
        back = max((p for p in self._trail if p <= same), default=None)
        if back is None:
            job = prefill(self.session, ctx, self.cache)
            state, logits = job.state, job.logits
        else:
            state, logits = self._trail[back]
            if back < len(ctx):
                lg, state = self.session.forward(ctx[None, back:], state, logits="last")
                logits = lg[0, -1]
        self._tokens, self._trail = ctx, {len(ctx): (state, logits)}
        drafts, dists = [], []
        for i in range(k):
            if i:
                lg, state = self.session.forward(np.array([[drafts[-1]]], np.int64), state, logits="last")
                logits = lg[0, -1]
                self._tokens = np.append(self._tokens, drafts[-1])
                self._trail[len(self._tokens)] = (state, logits)
            if sampling.greedy:
                drafts.append(int(np.argmax(logits)))
            else:
                dists.append(probabilities(logits[None], sampling)[0])
                drafts.append(_draw(dists[-1], rng))
        return drafts, (np.stack(dists) if dists else None)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn from the distribution `p` (sums to 1 up to rounding)."""
    c = np.cumsum(p)
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(p) - 1)


def verify(logits: np.ndarray, drafts: Sequence[int], q: np.ndarray | None, sampling: SamplingConfig,
           rng: np.random.Generator) -> tuple[int, int]:
    """How many drafts the target keeps, and the token that follows them.

    `logits` [n + 1, vocab] are the target's at the position before each draft and after the last.
    Greedy: keep drafts while they are the target's argmax; the next token is the target's argmax.
    Sampling: the standard rule (Leviathan et al. 2023, Chen et al. 2023): keep draft x with
    probability min(1, p(x) / q(x)); at the first rejection draw from max(0, p - q) renormalized;
    if all are kept, draw the bonus token from p. The output then follows p exactly. A deterministic
    proposal (`q` None) is a one-hot q.
    """
    n = len(drafts)
    if sampling.greedy:
        best = logits.argmax(-1)
        kept = next((i for i in range(n) if best[i] != drafts[i]), n)
        return kept, int(best[kept])
    p = probabilities(logits, sampling)
    for i, x in enumerate(drafts):
        qi = q[i] if q is not None else np.eye(1, p.shape[1], x)[0]
        if rng.random() * qi[x] < p[i, x]:
            continue
        residual = np.maximum(p[i] - qi, 0.0)
        return i, _draw(residual / residual.sum(), rng)
    return n, _draw(p[n], rng)


@dataclass
class SpeculationStats:
    """What a speculative generation did."""

    passes: int = 0  # verify passes (through the verify graph, or the prefill graph without one)
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # draft tokens kept
    decode_steps: int = 0  # plain decode steps (no draft worth verifying, or paying the debt)


class _Policy:
    """When to verify and how many drafts, from the timings and acceptance measured as it runs.

    A pass with n drafts gives E(n) = 1 + a + ... + a^n tokens (a: the measured chance that a draft is
    kept, drafts taken as independent) for t_verify + n * t_draft seconds; a decode step gives one token
    for t_decode. Verify with the best n when it beats decoding. Otherwise try a pass now and then (a
    drafter may start to match, as in a loop), spending at most about `explore` of the time on it.
    `a` is learned per `level` of the drafter's proposals (prompt lookup: a 3-gram match is kept far
    more often than a 1-gram one).
    """

    PROBE = 8  # drafts of a pass made to measure

    def __init__(self, explore: float = 0.05, free: bool = False) -> None:
        self.free = free  # the drafter's proposals cost nothing (prompt lookup): nothing to catch up
        self.counts: dict[object, list[float]] = {}  # level -> [kept, rejected]; a = kept / (kept + rejected)
        self.t: dict[str, float] = {}  # EMA of seconds: "decode", "verify", "draft" (per draft token)
        self.explore, self.since_pass = explore, 0

    def time(self, what: str, seconds: float) -> None:
        self.t[what] = seconds if what not in self.t else 0.8 * self.t[what] + 0.2 * seconds

    def acceptance(self, level: object = None) -> float:
        kept, rejected = self.counts.get(level, (1.0, 1.0))  # a prior of 1/2
        return kept / (kept + rejected)

    def drafts(self, room: int, level: object = None) -> int:
        if room < 1:
            return 0
        if "verify" not in self.t:
            return min(room, self.PROBE)
        if "decode" not in self.t:
            return 0
        a = self.acceptance(level)
        rate, n = max((sum(a ** i for i in range(n + 1)) / (self.t["verify"] + n * self.t.get("draft", 0.0)), n)
                      for n in range(1, room + 1))
        if rate * self.t["decode"] > 1.0:
            return n
        # a pass to look again costs the pass and bringing the drafter's state up to date (a model drafter
        # feeds it every token since it last drafted): spend at most `explore` of the time on it
        catch_up = 0.0 if self.free else self.since_pass * self.t.get("draft", 0.0)
        if self.since_pass * self.t["decode"] * self.explore >= self.t["verify"] + catch_up:
            return min(room, self.PROBE)
        return 0

    def passed(self, drafted: int, kept: int, level: object = None) -> None:
        k, r = self.counts.get(level, (1.0, 1.0))
        self.counts[level] = [0.9 * k + kept, 0.9 * r + (kept < drafted)]
        self.since_pass = 0


class SpeculativeGeneration(Iterator[int]):
    """The token stream of `speculative_generate`; like `Generation`, `state` + `pending` cover everything.

    Attributes:
        tokens: the tokens yielded so far.
        pending: the tokens not yet in `state` (the last sampled one; before the first token, the prompt).
        stats: passes, drafts verified and kept, plain decode steps.
    """

    def __init__(self, session: Session, drafter: Drafter, prompt: np.ndarray, max_new_tokens: int,
                 sampling: SamplingConfig, rng: np.random.Generator, state: State, stop_ids: set[int],
                 max_draft: int | None, always: bool, context: Sequence[int] = ()) -> None:
        self.session, self.drafter, self.sampling = session, drafter, sampling
        self.max_new_tokens, self.stop_ids, self.max_draft = max_new_tokens, stop_ids, max_draft
        self.tokens: list[int] = []
        self.stats = SpeculationStats()
        self._rng = rng
        self._context = [*context, *prompt.tolist()]  # what the drafter sees: the prompt and every token since
        self._state, self._debt, self._pending = state, list(prompt.tolist()), None  # pending None: prompt unfed
        self._ready: list[int] = []
        self._done = max_new_tokens == 0
        self._free, self._level = bool(getattr(drafter, "free", False)), None
        self._policy = _Policy(free=self._free)
        self._always = always
        self._verify_tokens = session.verify_tokens  # 0: verify through the prefill graph
        # the verify graph computes what the decode graph does (quantization included); a float package's
        # prefill graph does up to rounding; a quantized one's carries other quantization noise, so
        # without a verify graph only "always" verifies there
        self._exact = bool(self._verify_tokens) or session.manifest.precision.get("scheme", "fp32") == "fp32"

    @property
    def pending(self) -> list[int]:
        """Tokens not yet in `state`."""
        return [self._pending] if self._pending is not None else list(self._debt)

    @property
    def state(self) -> State:
        """The state after every token but `pending` (accepted tokens still owed are fed now)."""
        if self._pending is not None and self._debt:
            _, self._state = self.session.forward(np.array([self._debt], np.int64), self._state, logits="last")
            self._debt = []
        return self._state

    @property
    def done(self) -> bool:
        """True once a stop id was sampled or max_new_tokens yielded."""
        return self._done or len(self.tokens) + len(self._ready) >= self.max_new_tokens

    def step(self) -> list[int]:
        """Run one round (a verify pass or a decode step) and return every token it gives (none once done)."""
        new = [] if self.done else self._round()
        self.tokens.extend(self._ready + new)
        out, self._ready = self._ready + new, []
        return out

    def __next__(self) -> int:
        while not self._ready:
            if self.done:
                raise StopIteration
            self._ready = self._round()
        token = self._ready.pop(0)
        self.tokens.append(token)
        return token

    def _take(self, new: list[int]) -> tuple[list[int], list[int]]:
        """Cut a round's tokens at a stop id and at max_new_tokens: (tokens to yield, tokens now in the
        sequence, the last of which becomes pending)."""
        left = self.max_new_tokens - len(self.tokens) - len(self._ready)
        for i, t in enumerate(new[:left]):
            if t in self.stop_ids:
                self._done = True
                return new[:i], new[:i] + [t]
        return new[:left], new[:left]

    def _round(self) -> list[int]:
        if self._pending is None:  # the prompt: prefill it and sample the first token
            logits, self._state = self.session.forward(np.array([self._debt], np.int64), self._state, logits="last")
            self._debt = []
            first = int(sample(logits[:, -1], self.sampling, self._rng)[0])
            out, fed = self._take([first])
            self._pending = fed[-1]
            self._context.append(self._pending)
            return out
        if self._verify_tokens:
            return self._verify_round()
        K = self.session.prefill_tokens
        room = min(K - len(self._debt) - 1, self.max_draft if self.max_draft is not None else K)
        can = room >= 1 and "prefill" in self.session.graphs and (self._always or self._exact)
        drafts, q = self._propose(room) if can else ([], None)
        if not drafts:
            return self._decode_step()
        start = time.perf_counter()
        chunk = self._debt + [self._pending] + drafts
        real = len(chunk)
        logits, after = self.session.forward(np.array([chunk + [0] * (K - real)], np.int64), self._state)
        self._policy.time("verify", time.perf_counter() - start)
        j = len(self._debt)
        kept, nxt = verify(logits[0, j:j + len(drafts) + 1], drafts, q, self.sampling, self._rng)
        self._policy.passed(len(drafts), kept, self._level)
        self.stats.passes += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += kept
        out, fed = self._take(drafts[:kept] + [nxt])
        if real == K and fed == drafts + [nxt]:  # all K tokens real and kept: the pass's state is exact
            self._state, self._debt = after, []
        else:
            self._debt = self._debt + [self._pending] + fed[:-1]
        self._pending = fed[-1]
        self._context.extend(fed)
        return out

    def _propose(self, room: int) -> tuple[list[int], np.ndarray | None]:
        """At most `room` drafts (fewer, or none, when the policy says so), timed for the policy. A free
        drafter proposes first and the policy judges the proposal by its level; another drafter drafts
        only as many as the policy asks for."""
        free = self._free and not self._always
        n = room if self._always or free else self._policy.drafts(room)
        if not n:
            return [], None
        start = time.perf_counter()
        drafts, q = self.drafter.propose(np.array(self._context, np.int64), n, self.sampling, self._rng)
        drafts = [int(t) for t in drafts[:n]]
        self._level = getattr(self.drafter, "level", None)
        if drafts:
            self._policy.time("draft", (time.perf_counter() - start) / len(drafts))
        if free and drafts:
            keep = self._policy.drafts(len(drafts), self._level)
            drafts, q = drafts[:keep], (q[:keep] if q is not None else None)
        return drafts, q

    def _verify_round(self) -> list[int]:
        """One pass of the verify graph: `[pending] + drafts` from the exact state; the accepted prefix's
        state is the pass's state after its last token."""
        K = self._verify_tokens
        drafts, q = self._propose(max(0, min(K - 1, self.max_draft if self.max_draft is not None else K)))
        if not drafts:
            return self._decode_step()
        start = time.perf_counter()
        chunk = [self._pending, *drafts]
        logits, states = self.session.verify(np.array([chunk + chunk[-1:] * (K - len(chunk))], np.int64), self._state)
        self._policy.time("verify", time.perf_counter() - start)
        kept, nxt = verify(logits[0, :len(chunk)], drafts, q, self.sampling, self._rng)
        self._policy.passed(len(drafts), kept, self._level)
        self.stats.passes += 1
        self.stats.drafted += len(drafts)
        self.stats.accepted += kept
        out, fed = self._take(drafts[:kept] + [nxt])
        self._state = states[len(fed) - 1]  # position i holds chunk[i]: pending and the first len(fed) - 1 drafts
        self._pending = fed[-1]
        self._context.extend(fed)
        return out

    def _decode_step(self) -> list[int]:
        """One plain step: feed the debt and the pending token, sample the next."""
        self._policy.since_pass += 1
        start = time.perf_counter()
        logits, self._state = self.session.forward(np.array([self._debt + [self._pending]], np.int64), self._state,
                                                   logits="last")
        if not self._debt:
            self._policy.time("decode", time.perf_counter() - start)
        self.stats.decode_steps += 1 + len(self._debt)
        self._debt = []
        out, fed = self._take([int(sample(logits[:, -1], self.sampling, self._rng)[0])])
        self._pending = fed[-1]
        self._context.append(self._pending)
        return out


def speculative_generate(session: Session, drafter: Drafter, prompt_ids: Sequence[int] | np.ndarray,
                         max_new_tokens: int, sampling: SamplingConfig = GREEDY, seed: int | None = 0,
                         state: State | None = None, stop_ids: Collection[int] = (),
                         max_draft: int | None = None, speculate: str = "auto",
                         context: Sequence[int] = ()) -> SpeculativeGeneration:
    """Stream up to `max_new_tokens` token ids after `prompt_ids`, drafted by `drafter`, verified by `session`.

    With the package's verify graph (`Session.verify`), at temperature 0 the tokens are those of
    `generate`, in float and quantized packages alike: the verify graph computes what the decode graph
    computes. Without one, verification runs through the prefill graph, which differs from the decode
    graph by float rounding (~1e-6) in float packages and by other quantization noise in quantized
    ones (gla-10m INT8: up to 0.4 in a logit), so a near-tie can go the other way; there "auto" never
    verifies in a quantized package (the output is that of `generate`) and "always" may differ. With
    sampling each token follows the target's distribution (`verify`).

    Args:
        session: the target package; its verify graph's K (else its prefill chunk) bounds the drafts of
            a pass to K - 1.
        drafter: `PromptLookupDrafter()` or `ModelDrafter(Session(draft_package))`.
        prompt_ids, max_new_tokens, sampling, seed, state, stop_ids: as for `generate`.
        max_draft: most drafts per pass (None: as many as the chunk holds).
        speculate: "auto" verifies when the measured timings say it pays (otherwise it decodes plainly;
            without a verify graph, in float packages only); "always" verifies every round with as many
            drafts as fit (to measure a drafter, or, without a verify graph, to speculate in a quantized
            package knowing greedy output may differ).
        context: the tokens `state` already covers, shown to the drafter before the prompt (continuing
            from a saved or cached state).
    Example:
        >>> g = speculative_generate(target, ModelDrafter(Session("gla-1m")), ids, 256)  # doctest: +SKIP
        >>> out = list(g); g.stats.accepted / g.stats.drafted
        0.71
    """
    if not isinstance(session, Session):
        raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
    if not callable(getattr(drafter, "propose", None)):
        raise EdgelinError(f"drafter must have a propose() method (a Drafter), not {type(drafter).__name__}")
    if isinstance(drafter, ModelDrafter) and drafter.session.vocab_size != session.vocab_size:
        raise EdgelinError(f"the draft model's vocabulary ({drafter.session.vocab_size}) differs from the "
                           f"target's ({session.vocab_size}); they must share the tokenizer")
    ids = token_array(prompt_ids, session.vocab_size, "prompt_ids")
    if not ids.size:
        raise EdgelinError("the prompt is empty; give at least one token")
    stop = check_generation_args(max_new_tokens, sampling, seed, stop_ids)
    if max_draft is not None and (isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1):
        raise EdgelinError(f"max_draft must be an integer >= 1 or None, not {max_draft!r:.40}")
    if speculate not in ("auto", "always"):
        raise EdgelinError(f"speculate must be 'auto' or 'always', not {speculate!r:.40}")
    state = session.new_state(1) if state is None else state
    return SpeculativeGeneration(session, drafter, ids, max_new_tokens, sampling, np.random.default_rng(seed), state,
                                 stop, max_draft, speculate == "always", token_array(context, session.vocab_size,
                                                                                     "context").tolist())
