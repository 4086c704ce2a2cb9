"""A loaded model package: decode + prefill step graphs, explicit state in and out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import get_backend
from edgelin.runtime.package import Manifest, read_package

State = dict[str, np.ndarray]


class Session:
    """Run a model package's step graphs on one back end.

    Args:
        package_dir: the package directory (checksums are verified before loading).
        backend: registered back-end name ("ort"; see `edgelin.runtime.backends`).
        threads: intra-op threads for the back end (None: the back end's default).
    Example:
        >>> s = Session("out/tiny-gla")  # doctest: +SKIP
        >>> state = s.new_state(batch=1)
        >>> logits, state = s.forward(np.array([[72, 105]]), state)
        >>> logits.shape
        (1, 2, 256)
    """

    def __init__(self, package_dir: str | os.PathLike, backend: str = "ort", threads: int | None = None) -> None:
        self.package_dir = Path(package_dir)
        self.manifest: Manifest = read_package(self.package_dir)
        cls = get_backend(backend)
        self.graphs = {name: cls(self.package_dir / g.file, threads=threads)
                       for name, g in self.manifest.graphs.items() if name in ("decode", "prefill")}
        for name, graph in self.graphs.items():
            self._check_names(name, graph)

    def _check_names(self, name: str, graph) -> None:
        m, file = self.manifest, self.manifest.graphs[name].file
        want_in = {"input_ids"} | {s.input for s in m.states}
        want_out = {"logits"} | {s.output for s in m.states}
        for kind, want, have in (("input", want_in, graph.input_names), ("output", want_out, graph.output_names)):
            missing, extra = sorted(want - set(have)), sorted(set(have) - want)
            if missing or extra:
                what = f"lacks {kind} {missing[0]}" if missing else f"has unexpected {kind} {extra[0]}"
                raise EdgelinError(f"{file} in {self.package_dir} {what} (see manifest.json)")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the graphs accept."""
        return self.manifest.vocab_size

    @property
    def prefill_tokens(self) -> int:
        """Chunk length of the prefill graph (1 when the package has only a decode graph)."""
        return self.manifest.graphs["prefill"].tokens if "prefill" in self.graphs else 1

    def new_state(self, batch: int = 1) -> State:
        """All-zero states for `batch` sequences, keyed by graph input name."""
        if batch < 1:
            raise EdgelinError(f"batch must be >= 1, not {batch}")
        return {s.input: np.zeros(s.shape_for(batch), s.np_dtype) for s in self.manifest.states}

    def _check(self, ids: np.ndarray, state: State) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise EdgelinError(f"ids must be a 2-D integer array [batch, tokens], got {ids.dtype} {ids.shape}")
        if ids.shape[1] < 1:
            raise EdgelinError("ids must hold at least one token per sequence")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise EdgelinError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.vocab_size})")
        batch = ids.shape[0]
        specs = self.manifest.states
        if set(state) != {s.input for s in specs}:
            missing = sorted({s.input for s in specs} - set(state)) or sorted(set(state))
            raise EdgelinError(f"state does not match the package (check {missing[0]}); use new_state()")
        for s in specs:
            a = state[s.input]
            if a.ndim >= 1 and a.shape[0] != batch:
                raise EdgelinError(f"ids have batch {batch} but the state was made for batch {a.shape[0]}")
            if a.shape != s.shape_for(batch) or a.dtype != s.np_dtype:
                raise EdgelinError(f"state {s.input} is {a.dtype}{list(a.shape)}; the package needs "
                                   f"{s.dtype}{list(s.shape_for(batch))}")
        return ids.astype(np.int64, copy=False)

    def _step(self, name: str, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        out = self.graphs[name].run({"input_ids": np.ascontiguousarray(ids), **state})
        return out["logits"], {s.input: out[s.output] for s in self.manifest.states}

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Feed `ids` [B, T] after `state`; return logits [B, T, V] and the new state.

        Full chunks of `prefill_tokens` go through the prefill graph, the remainder token by
        token through decode, so the result is exact (no padding). `state` is not modified.
        """
        ids = self._check(ids, state)
        T, logits = ids.shape[1], []
        chunk, pos = self.prefill_tokens, 0
        while "prefill" in self.graphs and T - pos >= chunk:
            lg, state = self._step("prefill", ids[:, pos:pos + chunk], state)
            logits.append(lg)
            pos += chunk
        for t in range(pos, T):
            lg, state = self._step("decode", ids[:, t:t + 1], state)
            logits.append(lg)
        return (logits[0] if len(logits) == 1 else np.concatenate(logits, axis=1)), state
