"""Streaming generation: prefill the prompt, then decode one token at a time."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.sampling import SamplingConfig, package_max_new_tokens, package_sampling, sample
from edgelin.runtime.session import Session, State
from edgelin.runtime.tokenizer import Tokenizer, encode_prompt

DEFAULT_MAX_NEW_TOKENS = 64  # when neither the caller nor the package says (as `edgelin generate`)


class Generation(Iterator[int]):
    """The token stream `generate` returns; iterate it for token ids.

    `state` covers every token fed so far: the prompt and all yielded tokens but the last,
    which is held in `pending` (it is fed when the next token is asked for). To continue
    later, even from a saved state: `generate(session, g.pending, n, state=g.state)`.
    """

    def __init__(self, session: Session, prompt_ids: np.ndarray, max_new_tokens: int,
                 sampling: SamplingConfig, seed: int | None, state: State, stop_ids: Collection[int]) -> None:
        self.session, self.sampling, self._state = session, sampling, state
        self._own_state = False  # the caller's state, or one handed out by `state`: never written in place
        self.max_new_tokens, self.stop_ids = max_new_tokens, set(stop_ids)
        self.tokens: list[int] = []
        self.pending: list[int] = prompt_ids.tolist()
        self._rng = np.random.default_rng(seed)
        self._done = max_new_tokens == 0

    @property
    def state(self) -> State:
        self._own_state = False  # whoever reads it may keep it: the next step must not write into it
        return self._state

    def __next__(self) -> int:
        if self._done or len(self.tokens) >= self.max_new_tokens:
            raise StopIteration
        logits, self._state = self.session.forward(np.array([self.pending], np.int64), self._state, logits="last",
                                                   donate=self._own_state)
        self._own_state = True
        token = int(sample(logits[:, -1], self.sampling, self._rng)[0])
        self.pending = [token]
        if token in self.stop_ids:
            self._done = True
            raise StopIteration
        self.tokens.append(token)
        return token


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _token_set(ids: object) -> set[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Collection) or not all(map(_is_int, ids)):
        raise EdgelinError("stop_ids must be a collection of token ids")
    return {int(t) for t in ids}


def generate(session: Session, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int | None = None,
             sampling: SamplingConfig | None = None, seed: int | None = 0, state: State | None = None,
             stop_ids: Collection[int] = ()) -> Generation:
    """Stream up to `max_new_tokens` token ids after `prompt_ids` (one sequence).

    Args:
        session: a loaded package.
        prompt_ids: 1-D token ids, at least one.
        max_new_tokens: how many tokens to generate at most; None: the package's default (its
            `generation.max_new_tokens`, or what `max_length` leaves), else DEFAULT_MAX_NEW_TOKENS.
        sampling: None: the package's defaults (`package_sampling`: its source's generation_config.json),
            greedy for packages without; see `SamplingConfig`.
        seed: seed of the `numpy.random.Generator` used for sampling.
        state: batch-1 state to start from (default: zeros, i.e. a fresh sequence).
        stop_ids: tokens that end generation (not yielded).
    Returns:
        A `Generation` iterator of ints; its `state` / `pending` allow resuming.
    Example:
        >>> for t in generate(Session("pkg"), [72, 105], 16, SamplingConfig(0.8, top_k=40), seed=1):  # doctest: +SKIP
        ...     print(t)
    """
    if not isinstance(session, Session):
        raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
    try:
        ids = np.asarray(prompt_ids)
    except (ValueError, TypeError):
        raise EdgelinError("prompt_ids must be 1-D token ids") from None
    if ids.ndim != 1 or ids.size == 0:
        raise EdgelinError("the prompt is empty; give at least one token" if ids.size == 0
                           else f"prompt_ids must be 1-D token ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise EdgelinError(f"prompt_ids must be integers, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= session.vocab_size)]
    if bad.size:
        raise EdgelinError(f"token id {int(bad[0])} is outside the vocabulary [0, {session.vocab_size})")
    if max_new_tokens is None:
        max_new_tokens = package_max_new_tokens(session.manifest, ids.size, DEFAULT_MAX_NEW_TOKENS)
    if sampling is None:
        sampling = package_sampling(session.manifest)
    stop = check_generation_args(max_new_tokens, sampling, seed, stop_ids)
    if state is not None and not isinstance(state, Mapping):
        raise EdgelinError(f"state must be a state mapping (session.new_state()), not {type(state).__name__}")
    state = session.new_state(1) if state is None else state
    return Generation(session, ids, max_new_tokens, sampling, seed, state, stop)


def check_generation_args(max_new_tokens: object, sampling: object, seed: object, stop_ids: object) -> set[int]:
    """Check the arguments every generation loop takes; returns the stop ids as a set.

    Raises:
        EdgelinError: naming the first bad argument.
    """
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise EdgelinError(f"max_new_tokens must be an integer >= 0, not {max_new_tokens!r:.40}")
    if not isinstance(sampling, SamplingConfig):
        raise EdgelinError(f"sampling must be a SamplingConfig, not {type(sampling).__name__}")
    if seed is not None and (not _is_int(seed) or seed < 0):
        raise EdgelinError(f"seed must be an integer >= 0 or None, not {seed!r:.40}")
    return _token_set(stop_ids)


def end_ids(tokenizer: Tokenizer) -> set[int]:
    """Every token that ends a text: the tokenizer's eos ids (its eos_id for tokenizers without a list)."""
    ids = getattr(tokenizer, "eos_ids", None) or ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
    return {int(t) for t in ids}


def generate_text(session: Session, tokenizer: Tokenizer, prompt: str, max_new_tokens: int | None = None,
                  sampling: SamplingConfig | None = None, seed: int | None = 0, state: State | None = None,
                  stop_ids: Collection[int] = ()) -> Iterator[str]:
    """Like `generate`, but takes text and streams decoded text pieces (whole characters only; special
    tokens left out unless the tokenizer keeps them).

    A fresh sequence (no `state`) starts with the package's bos_id where its tokenizer adds one; every
    one of its eos ids ends generation."""
    if not isinstance(prompt, str):
        raise EdgelinError(f"the prompt must be text (str), not {type(prompt).__name__}")
    ids = encode_prompt(tokenizer, prompt) if state is None else tokenizer.encode(prompt)
    stop = _token_set(stop_ids) | end_ids(tokenizer)
    tokens = generate(session, ids, max_new_tokens, sampling, seed, state, stop)
    decoder = tokenizer.stream_decoder()

    def pieces() -> Iterator[str]:
        for t in tokens:
            if piece := decoder.push(t):
                yield piece
        if tail := decoder.flush():
            yield tail

    return pieces()
