"""Prompt-state cache: states checkpointed at token boundaries, found by the longest cached token prefix.

A recurrent model's whole context is its state, a few megabytes whatever the length. `PrefixCache`
keeps the state (and the next-token logits) after given token prefixes, least recently used evicted
first by bytes, optionally spilled to disk as state snapshots (`save_state`). `Prefill` feeds a
prompt after the longest cached prefix of it and checkpoints the positions asked for, so a prompt
that shares a system prompt or a chat history with an earlier one resumes where that one was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.session import LiveState, Session, State
from edgelin.runtime.state import check_state, copy_state, load_state, save_state, state_nbytes

DEFAULT_CACHE_BYTES = 256 << 20


def token_array(tokens: object, vocab_size: int, what: str = "tokens") -> np.ndarray:
    """`tokens` as a 1-D int64 array of ids in [0, vocab_size); an EdgelinError names what is wrong."""
    if isinstance(tokens, (str, bytes)):
        raise EdgelinError(f"{what} must be token ids, not {type(tokens).__name__}")
    try:
        ids = np.asarray(tokens)
    except (ValueError, TypeError):
        raise EdgelinError(f"{what} must be a 1-D sequence of token ids") from None
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise EdgelinError(f"{what} must be a 1-D sequence of token ids, got {ids.dtype} {list(ids.shape)}")
    bad = ids[(ids < 0) | (ids >= vocab_size)] if ids.size else ids
    if bad.size:
        raise EdgelinError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")
    return ids.astype(np.int64)


def _digests(ids: np.ndarray, lengths: Iterable[int]) -> dict[int, bytes]:
    """blake2b of ids[:L] for every L in `lengths`, in one pass over the ids."""
    data, h, at, out = ids.astype("<i8").tobytes(), hashlib.blake2b(digest_size=16), 0, {}
    for n in sorted(lengths):
        h.update(data[at * 8:n * 8])
        at, out[n] = n, h.copy().digest()
    return out


@dataclass(frozen=True)
class CachedPrefix:
    """A cached checkpoint: the state after `tokens` and the logits that predict the next token.

    The arrays are read-only and shared with the cache; `Session.forward` takes them as they are.
    """

    tokens: np.ndarray  # int64 [n]
    state: State  # batch 1
    logits: np.ndarray  # float32 [vocab]

    @property
    def length(self) -> int:
        """How many tokens the checkpoint covers."""
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        """Bytes the checkpoint holds in memory."""
        return state_nbytes(self.state) + self.tokens.nbytes + self.logits.nbytes


@dataclass
class _Spilled:
    tokens: np.ndarray
    logits: np.ndarray
    path: Path
    nbytes: int


@dataclass
class CacheStats:
    """Counters of a PrefixCache (a copy; see `PrefixCache.stats`)."""

    entries: int = 0
    bytes: int = 0
    spilled_entries: int = 0
    spilled_bytes: int = 0
    hits: int = 0
    misses: int = 0
    hit_tokens: int = 0  # tokens not fed again thanks to hits
    evictions: int = 0
    spill_failures: int = 0


class PrefixCache:
    """Bounded cache of states by token prefix: LRU by bytes, optional spill to disk. Thread-safe.

    Args:
        session: the package whose states are cached (its state layout and vocabulary).
        max_bytes: memory budget for states, logits and tokens; least recently used entries leave first.
        spill_dir: where entries evicted from memory go as state snapshots (`save_state` format), in a
            private subfolder removed by `close()`; None: evicted entries are dropped.
        spill_bytes: disk budget of the spilled snapshots, least recently used deleted first.
    Raises:
        EdgelinError: a bad budget, or a spill folder that cannot be created.
    Example:
        >>> cache = PrefixCache(session, max_bytes=64 << 20)  # doctest: +SKIP
        >>> first = prefill(session, system + question_1, cache, marks=[len(system)])
        >>> second = prefill(session, system + question_2, cache)  # resumes after `system`
        >>> second.reused == len(system)
        True
    """

    def __init__(self, session: Session, max_bytes: int = DEFAULT_CACHE_BYTES, *,
                 spill_dir: str | os.PathLike | None = None, spill_bytes: int = 1 << 30) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        for name, v in (("max_bytes", max_bytes), ("spill_bytes", spill_bytes)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise EdgelinError(f"{name} must be an integer >= 0, not {v!r:.40}")
        if spill_dir is not None and not isinstance(spill_dir, (str, os.PathLike)):
            raise EdgelinError(f"spill_dir must be a folder path or None, not {type(spill_dir).__name__}")
        self.session, self.max_bytes, self.spill_bytes = session, int(max_bytes), int(spill_bytes)
        self._mem: OrderedDict[tuple[int, bytes], CachedPrefix] = OrderedDict()
        self._disk: OrderedDict[tuple[int, bytes], _Spilled] = OrderedDict()
        self._lengths: Counter[int] = Counter()  # how many entries (memory or disk) cover each length
        self._mem_bytes = self._disk_bytes = 0
        self._stats = CacheStats()
        self._lock = threading.Lock()
        self._spill: Path | None = None
        if spill_dir is not None:
            try:
                Path(spill_dir).mkdir(parents=True, exist_ok=True)
                self._spill = Path(tempfile.mkdtemp(prefix=f"edgelin-prefix-{os.getpid()}-", dir=spill_dir))
            except OSError as e:
                raise EdgelinError(f"cannot create a spill folder in {spill_dir}: {e.strerror}") from None
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._spill, ignore_errors=True)

    @property
    def stats(self) -> CacheStats:
        """Entry counts, bytes, hits and misses so far."""
        with self._lock:
            return CacheStats(**{**self._stats.__dict__, "entries": len(self._mem), "spilled_entries": len(self._disk),
                                 "bytes": self._mem_bytes, "spilled_bytes": self._disk_bytes})

    def __len__(self) -> int:
        return len(self._mem) + len(self._disk)

    def put(self, tokens: Sequence[int] | np.ndarray, state: State, logits: np.ndarray) -> bool:
        """Keep `state` (batch 1, after `tokens`) and `logits` (the last position's, [vocab]).

        The arrays are copied. Returns False when the entry is larger than the whole budget.
        """
        ids = token_array(tokens, self.session.vocab_size)
        if not ids.size:
            raise EdgelinError("a cached prefix needs at least one token")
        if isinstance(state, LiveState) and state._session is self.session:
            state = dict(state)
        if check_state(state, self.session.manifest.states, finite=False) != 1:
            raise EdgelinError("the prefix cache keeps one sequence's state (batch 1)")
        try:
            row = np.array(logits, np.float32).reshape(self.session.vocab_size)
        except (ValueError, TypeError):
            raise EdgelinError(f"logits must hold {self.session.vocab_size} numbers (one position), "
                               f"got shape {list(np.shape(logits))}") from None
        key = (ids.size, _digests(ids, [ids.size])[ids.size])
        entry = CachedPrefix(_frozen(ids), copy_state(state, read_only=True), _frozen(row))
        if entry.nbytes > self.max_bytes:
            return False
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return True
            if key in self._disk:
                self._drop_spilled(key)
            self._add(key, entry)
        return True

    def longest(self, tokens: Sequence[int] | np.ndarray) -> CachedPrefix | None:
        """The cached checkpoint of the longest prefix of `tokens` (all of them at most), or None."""
        ids = token_array(tokens, self.session.vocab_size)
        with self._lock:
            lengths = [n for n in self._lengths if 0 < n <= ids.size and self._lengths[n] > 0]
            for n, digest in sorted(_digests(ids, lengths).items(), reverse=True):
                key = (n, digest)
                entry = self._mem.get(key)
                if entry is None and key in self._disk:
                    entry = self._unspill(key)
                if entry is not None and np.array_equal(entry.tokens, ids[:n]):
                    self._mem.move_to_end(key)
                    self._stats.hits += 1
                    self._stats.hit_tokens += n
                    return entry
            self._stats.misses += 1
            return None

    def clear(self) -> None:
        """Drop every entry, in memory and on disk."""
        with self._lock:
            for spilled in self._disk.values():
                spilled.path.unlink(missing_ok=True)
            self._mem.clear()
            self._disk.clear()
            self._lengths.clear()
            self._mem_bytes = self._disk_bytes = 0

    def close(self) -> None:
        """Drop every entry and remove the spill folder."""
        self.clear()
        if self._spill is not None:
            self._cleanup()

    def _add(self, key: tuple[int, bytes], entry: CachedPrefix) -> None:
        self._mem[key] = entry
        self._mem_bytes += entry.nbytes
        self._lengths[key[0]] += 1
        while self._mem_bytes > self.max_bytes:
            old, gone = self._mem.popitem(last=False)
            self._mem_bytes -= gone.nbytes
            self._lengths[old[0]] -= 1
            self._stats.evictions += 1
            self._spill_out(old, gone)

    def _drop_spilled(self, key: tuple[int, bytes]) -> _Spilled:
        gone = self._disk.pop(key)
        gone.path.unlink(missing_ok=True)
        self._disk_bytes -= gone.nbytes
        self._lengths[key[0]] -= 1
        return gone

    def _spill_out(self, key: tuple[int, bytes], entry: CachedPrefix) -> None:
        if self._spill is None or state_nbytes(entry.state) > self.spill_bytes:
            return
        path = self._spill / f"{key[0]}-{key[1].hex()}.state.npz"
        try:
            save_state(path, entry.state, self.session.manifest)
            size = path.stat().st_size
        except (EdgelinError, OSError):  # a full or read-only disk: the entry is only dropped
            self._stats.spill_failures += 1
            return
        self._disk[key] = _Spilled(entry.tokens, entry.logits, path, size)
        self._disk_bytes += size
        self._lengths[key[0]] += 1
        while self._disk_bytes > self.spill_bytes:
            self._drop_spilled(next(iter(self._disk)))

    def _unspill(self, key: tuple[int, bytes]) -> CachedPrefix | None:
        path = self._disk[key].path
        try:
            state = load_state(path, self.session.manifest)
        except EdgelinError:  # removed or damaged by someone else: a miss
            state = None
        spilled = self._drop_spilled(key)
        if state is None:
            return None
        entry = CachedPrefix(spilled.tokens, {k: _frozen(v) for k, v in state.items()}, spilled.logits)
        self._add(key, entry)
        return entry


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


class Prefill:
    """Feeds `tokens` after the longest cached prefix of them, checkpointing into the cache as it goes.

    Runs all at once (`prefill()`) or a budget at a time (`step`), so a server can interleave long
    prompts with decoding. Checkpoints go in `cache` at every position of `marks`, every multiple of
    `every`, and at the end.

    Args:
        session: the package.
        tokens: the whole prompt (1-D token ids).
        cache: where to look for the longest cached prefix and put checkpoints (None: no cache).
        marks: positions to checkpoint (e.g. where each chat message ends).
        every: also checkpoint every multiple of this many tokens (None: only `marks` and the end).
        start: a checkpoint of a prefix of `tokens` to resume from when the cache has no longer one
            (a conversation's current state).
    Attributes:
        reused: how many tokens came from the cache (or `start`) instead of being fed.
        position: how many tokens the state covers so far.
        state, logits: after `position` tokens (the final state and next-token logits once `done`).
    Example:
        >>> job = Prefill(session, long_prompt, cache)  # doctest: +SKIP
        >>> while not job.step(budget=session.prefill_tokens):
        ...     decode_other_requests()
    """

    def __init__(self, session: Session, tokens: Sequence[int] | np.ndarray, cache: PrefixCache | None = None, *,
                 marks: Iterable[int] = (), every: int | None = None, start: CachedPrefix | None = None) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        self.session, self.cache = session, cache
        self.tokens = token_array(tokens, session.vocab_size, "the prompt")
        if not self.tokens.size:
            raise EdgelinError("the prompt is empty; give at least one token")
        if cache is not None and (not isinstance(cache, PrefixCache) or cache.session is not session):
            raise EdgelinError("cache must be a PrefixCache made for this session")
        if every is not None and (isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1):
            raise EdgelinError(f"every must be an integer >= 1 or None, not {every!r:.40}")
        n = self.tokens.size
        hit = cache.longest(self.tokens) if cache is not None else None
        if start is not None and (hit is None or start.length > hit.length):
            hit = start
        self.reused = self.position = hit.length if hit is not None else 0
        self.state: State = hit.state if hit is not None else session.new_state(1)
        self.logits: np.ndarray | None = hit.logits if hit is not None else None
        stops = {int(m) for m in marks if self.reused < m < n}
        if every:
            stops |= set(range((self.reused // every + 1) * every, n, every))
        self._stops = sorted(stops | {n})

    @property
    def done(self) -> bool:
        """True once every token has been fed."""
        return self.position == self.tokens.size

    def step(self, budget: int | None = None) -> bool:
        """Feed at most `budget` more tokens (None: all), stopping at the next checkpoint; True when done."""
        while not self.done:
            stop = next(s for s in self._stops if s > self.position)
            end = stop if budget is None else min(stop, self.position + budget)
            logits, self.state = self.session.forward(self.tokens[None, self.position:end], self.state, logits="last")
            self.logits, self.position = logits[0, -1], end
            if end == stop and self.cache is not None:
                self.cache.put(self.tokens[:end], self.state, self.logits)
            if budget is not None:
                break
        return self.done


def prefill(session: Session, tokens: Sequence[int] | np.ndarray, cache: PrefixCache | None = None, *,
            marks: Iterable[int] = (), every: int | None = None) -> Prefill:
    """Feed `tokens` from a fresh state, resuming after the longest prefix `cache` holds.

    Exact: the state and logits equal those of `session.forward(tokens, new_state)` up to float
    rounding (the prefill and decode graphs split the same work differently).
    Example:
        >>> p = prefill(session, ids, cache, marks=[len(system_ids)])  # doctest: +SKIP
        >>> next_token = int(p.logits.argmax())
    """
    job = Prefill(session, tokens, cache, marks=marks, every=every)
    job.step()
    return job
