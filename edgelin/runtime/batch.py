"""Batched decoding: independent sequences stepped together through the batch axis of the step graphs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.session import LiveState, Session, State
from edgelin.runtime.state import check_state

DEFAULT_MAX_BATCH = 8


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class BatchDecoder:
    """Decode several sequences at once, one token each per `step`; they join and leave between steps.

    Each sequence owns one row of a batched state (continuous batching): `add` appends its state
    and returns a slot id, `step` feeds one token per slot through the decode graph at batch B and
    returns each slot's next-token logits, `remove` takes the row out (its state) and frees the slot.
    Rows never mix: each row's result equals decoding that sequence alone, up to float rounding.

    Graphs fixed to batch 1 (the `openvino-stateful` and `tvm` back ends, `--profile` exports) cannot
    take B rows at once; there the decoder steps the rows one after another through the batch-1
    graph (`vectorized` is False): the same results, at the speed of B single streams.

    Not thread-safe: one thread drives a decoder (a server's engine loop).

    Args:
        session: the package.
        max_batch: how many sequences may decode together; `add` refuses more.
    Example:
        >>> dec = BatchDecoder(session, max_batch=4)  # doctest: +SKIP
        >>> a, b = dec.add(state_a), dec.add(state_b)
        >>> logits = dec.step({a: next_a, b: next_b})   # {slot: [vocab] logits}
        >>> final_b = dec.remove(b)                      # b leaves; a keeps decoding
    """

    def __init__(self, session: Session, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        if not _is_int(max_batch) or not 1 <= max_batch <= 4096:
            raise EdgelinError(f"max_batch must be an integer in [1, 4096], not {max_batch!r:.40}")
        self.session, self.max_batch = session, int(max_batch)
        self.vectorized = session.batch is None
        self._slots: list[int] = []  # slot id of each row, in row order
        self._next_slot = 0
        self._state: State | None = None  # vectorized: [rows, ...] arrays
        self._rows: list[State] = []  # one batch-1 state per row otherwise

    @property
    def slots(self) -> list[int]:
        """The slot ids decoding now, in row order."""
        return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, state: Mapping[str, np.ndarray]) -> int:
        """Add a sequence from its batch-1 state (covering every token it has been fed); returns its slot id."""
        if len(self._slots) >= self.max_batch:
            raise EdgelinError(f"the batch is full ({self.max_batch} sequences); remove one first")
        if isinstance(state, LiveState):
            state = dict(state)
        if check_state(state, self.session.manifest.states, finite=self.session.check_finite) != 1:
            raise EdgelinError("add takes one sequence's state (batch 1)")
        if not self.vectorized:
            self._rows.append(dict(state))
        elif self._state is None:
            self._state = {k: np.array(v) for k, v in state.items()}
        else:
            self._state = {k: np.concatenate([v, state[k]]) for k, v in self._state.items()}
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        self._slots.append(slot)
        return slot

    def state(self, slot: int) -> State:
        """A copy of the slot's batch-1 state."""
        row = self._row(slot)
        if not self.vectorized:
            return {k: np.array(v) for k, v in dict(self._rows[row]).items()}
        return {k: v[row:row + 1].copy() for k, v in self._state.items()}

    def remove(self, slot: int) -> State:
        """Take the sequence out of the batch, freeing its slot; returns its batch-1 state."""
        state, row = self.state(slot), self._row(slot)
        del self._slots[row]
        if not self.vectorized:
            del self._rows[row]
        elif not self._slots:
            self._state = None
        else:
            self._state = {k: np.delete(v, row, axis=0) for k, v in self._state.items()}
        return state

    def step(self, tokens: Mapping[int, int]) -> dict[int, np.ndarray]:
        """Feed one token to every slot ({slot: token id}); returns {slot: next-token logits [vocab]}."""
        if not isinstance(tokens, Mapping):
            raise EdgelinError(f"tokens must map each slot to its next token id, not {type(tokens).__name__}")
        if not self._slots:
            raise EdgelinError("nothing to step: the batch is empty")
        if set(tokens) != set(self._slots):
            odd = sorted(set(tokens) ^ set(self._slots), key=str)[0]
            raise EdgelinError(f"step needs one token for every slot decoding now ({self._slots}); check slot {odd!r:.40}")
        if not all(_is_int(t) for t in tokens.values()):
            raise EdgelinError("tokens must be token ids (integers)")
        ids = np.array([[tokens[s]] for s in self._slots], np.int64)
        if self.vectorized:
            logits, self._state = self.session.forward(ids, self._state, logits="last")
            return {slot: logits[row, 0] for row, slot in enumerate(self._slots)}
        out = {}
        for row, slot in enumerate(self._slots):
            # a stateful back end's LiveState is copied out when the next row runs (see LiveState)
            logits, self._rows[row] = self.session.forward(ids[row:row + 1], self._rows[row], logits="last")
            out[slot] = logits[0, 0]
        return out

    def _row(self, slot: int) -> int:
        try:
            return self._slots.index(slot)
        except ValueError:
            raise EdgelinError(f"no sequence with slot {slot!r:.40} is decoding") from None
