"""A loaded model package: decode + prefill step graphs, explicit state in and out."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import get_backend
from edgelin.runtime.package import Manifest, read_package
from edgelin.runtime.weights import shared_initializers

State = dict[str, np.ndarray]


class LiveState(Mapping):
    """The state a stateful back end holds after `Session.forward`: read from it only when asked.

    It is a read-only mapping like a `State`; reading it (`dict(state)`, `save_state`) copies the
    back end's variables. Once the session runs another step from any state, an unread LiveState
    is gone (reading it raises): copy it with `dict(state)` first to keep it.
    """

    def __init__(self, session: "Session", version: int) -> None:
        self._session, self._version, self._arrays = session, version, None

    @property
    def current(self) -> bool:
        return self._session._version == self._version

    def _read(self) -> State:
        if self._arrays is None:
            if not self.current:
                raise EdgelinError("this state was advanced by a later forward() and is gone; "
                                   "copy it with dict(state) before running further steps to keep it")
            self._arrays = self._session._read_live()
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(s.input for s in self._session.manifest.states)

    def __len__(self) -> int:
        return len(self._session.manifest.states)


class Session:
    """Run a model package's step graphs on one back end.

    Args:
        package_dir: the package directory (checksums are verified before loading).
        backend: registered back-end name ("ort", "openvino", "openvino-stateful", "tvm"; see
            `edgelin.runtime.backends`).
        threads: intra-op threads for the back end (None: the back end's default).
        device: device name for back ends that have one (OpenVINO: "CPU", "NPU"); None: default.
    Example:
        >>> s = Session("out/tiny-gla")  # doctest: +SKIP
        >>> state = s.new_state(batch=1)
        >>> logits, state = s.forward(np.array([[72, 105]]), state)
        >>> logits.shape
        (1, 2, 256)
    """

    def __init__(self, package_dir: str | os.PathLike, backend: str = "ort", threads: int | None = None,
                 device: str | None = None) -> None:
        self.package_dir = Path(package_dir)
        self.manifest: Manifest = read_package(self.package_dir)
        self.backend = backend
        cls = get_backend(backend)
        files = (cls.graph_files(self.manifest) if hasattr(cls, "graph_files")
                 else {name: g.file for name, g in self.manifest.graphs.items()})
        options = {"threads": threads} | ({"device": device} if device else {})
        files = {name: spec if isinstance(spec, dict) else {"file": spec} for name, spec in files.items()
                 if name in ("decode", "prefill")}
        # one copy of the weights for both graphs where the back end can take arrays (docs/FORMAT.md)
        shared = shared_initializers(self.package_dir, self.manifest) if getattr(cls, "shares_weights", False) else {}
        self.graphs = {name: cls(self.package_dir / spec["file"], **options,
                                 **{k: self.package_dir / v if k == "weights" else v
                                    for k, v in spec.items() if k != "file"},
                                 **({"initializers": shared[name]} if shared.get(name) else {}))
                       for name, spec in files.items()}
        self.stateful = bool(getattr(cls, "stateful", False))
        # the one batch the graphs accept, if fixed (compiled back ends, profile exports)
        self.batch = getattr(self.graphs["decode"], "batch", None) or (self.manifest.raw.get("profile") or {}).get("batch")
        self._version, self._holder, self._live = 0, None, None  # stateful back ends only
        for name, graph in self.graphs.items():
            self._check_names(name, graph, files[name]["file"])

    def _check_names(self, name: str, graph, file: str) -> None:
        m = self.manifest
        want_in = {"input_ids"} | {s.input for s in m.states}
        want_out = {"logits"} | {s.output for s in m.states}
        checks = [("input", want_in, graph.input_names), ("output", want_out, graph.output_names)]
        if self.stateful:
            checks = [("input", {"input_ids"}, graph.input_names), ("output", {"logits"}, graph.output_names),
                      ("state variable", {s.input for s in m.states}, graph.state_names)]
        for kind, want, have in checks:
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
        if self.batch is not None and batch != self.batch:
            raise EdgelinError(f"the {self.backend} graphs of this package are fixed to batch {self.batch}, "
                               f"not {batch}")
        if isinstance(state, LiveState) and state._session is self:
            if not state.current:
                state._read()  # raises unless it was read before it went stale
            return ids.astype(np.int64, copy=False)
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
        if self.stateful:
            return self._stateful_step(name, ids, state)
        out = self.graphs[name].run({"input_ids": np.ascontiguousarray(ids), **state})
        return out["logits"], {s.input: out[s.output] for s in self.manifest.states}

    def _stateful_step(self, name: str, ids: np.ndarray, state: State) -> tuple[np.ndarray, LiveState]:
        graph = self.graphs[name]
        if not (isinstance(state, LiveState) and state._session is self and state.current):
            graph.set_state(dict(state))  # restore: a snapshot, a fresh new_state(), a saved file
        elif self._holder != name:  # hand the live state from prefill to decode (or back)
            graph.set_state(self.graphs[self._holder].get_state())
        logits = graph.run({"input_ids": np.ascontiguousarray(ids)})["logits"]
        self._version += 1
        self._holder, self._live = name, LiveState(self, self._version)
        return logits, self._live

    def _read_live(self) -> State:
        live = self.graphs[self._holder].get_state()
        return {s.input: live[s.input].astype(s.np_dtype, copy=False) for s in self.manifest.states}

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Feed `ids` [B, T] after `state`; return logits [B, T, V] and the new state.

        Full chunks of `prefill_tokens` go through the prefill graph, the remainder token by
        token through decode, so the result is exact (no padding). `state` is not modified; with a
        stateful back end the returned state is a `LiveState` and an unread earlier one is gone.
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
