"""A conversation: one sequence to extend, generate into and rewind to any earlier position, exactly."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.generate import check_generation_args
from edgelin.runtime.prefix_cache import CachedPrefix, Prefill, PrefixCache, token_array
from edgelin.runtime.sampling import GREEDY, SamplingConfig, sample
from edgelin.runtime.session import Session, State

DEFAULT_CHECKPOINT_EVERY = 64


class Conversation:
    """One sequence whose state always covers every token fed; `rewind` goes back to any position.

    The state is checkpointed into a `PrefixCache` every `checkpoint_every` tokens (and after every
    `feed`), so `rewind(p)` restores the last checkpoint at or before `p` and replays the rest:
    at most `checkpoint_every - 1` tokens while the checkpoints are cached (evicted ones only make it
    replay more). Checkpoints are keyed by their tokens, so conversations sharing a cache reuse each
    other's prefixes.

    Args:
        session: the package.
        cache: where checkpoints go (None: a private cache of `cache_bytes`).
        checkpoint_every: tokens between checkpoints.
        cache_bytes: budget of the private cache.
    Example:
        >>> chat = Conversation(session)  # doctest: +SKIP
        >>> chat.feed(tok.encode("user: hi\\nassistant:"))
        >>> reply = list(chat.generate(40, stop_ids={10}))
        >>> chat.rewind(chat.position - len(reply))   # take the reply back
        >>> again = list(chat.generate(40, SamplingConfig(0.8), seed=2, stop_ids={10}))
    """

    def __init__(self, session: Session, *, cache: PrefixCache | None = None,
                 checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY, cache_bytes: int = 64 << 20) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
                or checkpoint_every < 1:
            raise EdgelinError(f"checkpoint_every must be an integer >= 1, not {checkpoint_every!r:.40}")
        if cache is not None and (not isinstance(cache, PrefixCache) or cache.session is not session):
            raise EdgelinError("cache must be a PrefixCache made for this session")
        self.session, self.every = session, int(checkpoint_every)
        self.cache = cache if cache is not None else PrefixCache(session, cache_bytes)
        self._tokens: list[int] = []
        self.state: State = session.new_state(1)
        self.logits: np.ndarray | None = None  # [vocab], predicting the token after the last one

    @property
    def tokens(self) -> list[int]:
        """Every token fed so far (a copy)."""
        return list(self._tokens)

    @property
    def position(self) -> int:
        """How many tokens the state covers."""
        return len(self._tokens)

    def feed(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Append `ids` (at least one token); returns the logits predicting the next token ([vocab])."""
        new = token_array(ids, self.session.vocab_size, "ids")
        if not new.size:
            raise EdgelinError("feed needs at least one token")
        here = CachedPrefix(np.asarray(self._tokens, np.int64), self.state, self.logits) if self._tokens else None
        self._run(np.concatenate([np.asarray(self._tokens, np.int64), new]), here)
        return self.logits

    def generate(self, max_new_tokens: int, sampling: SamplingConfig = GREEDY, seed: int | None = 0,
                 stop_ids: Collection[int] = ()) -> Iterator[int]:
        """Sample up to `max_new_tokens` tokens, feeding each as it is yielded; a stop id ends it unfed."""
        stop = check_generation_args(max_new_tokens, sampling, seed, stop_ids)
        if self.logits is None:
            raise EdgelinError("the conversation is empty; feed at least one token before generating")
        rng = np.random.default_rng(seed)
        for _ in range(max_new_tokens):
            token = int(sample(self.logits[None], sampling, rng)[0])
            if token in stop:
                return
            logits, self.state = self.session.forward(np.array([[token]], np.int64), self.state, logits="last")
            self._tokens.append(token)
            self.logits = logits[0, -1]
            if self.position % self.every == 0:
                self.cache.put(self._tokens, self.state, self.logits)
            yield token

    def rewind(self, position: int) -> None:
        """Go back to `position` (0 <= position <= self.position): the state after the first `position` tokens."""
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) \
                or not 0 <= position <= self.position:
            raise EdgelinError(f"position must be an integer in [0, {self.position}], not {position!r:.40}")
        if position == self.position:
            return
        if position == 0:
            self._tokens, self.state, self.logits = [], self.session.new_state(1), None
            return
        self._run(np.asarray(self._tokens[:position], np.int64), None)

    def _run(self, tokens: np.ndarray, start: CachedPrefix | None) -> None:
        job = Prefill(self.session, tokens, self.cache, every=self.every, start=start)
        job.step()
        self._tokens, self.state, self.logits = tokens.tolist(), job.state, job.logits
