"""A loaded model package: decode + prefill step graphs (+ the verify graph, loaded on first use),
explicit state in and out."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import get_backend
from edgelin.runtime.package import Manifest, read_package, state_spec, steps_output
from edgelin.runtime.schema import Checker, check_states
from edgelin.runtime.state import all_finite, check_state, ring_windows
from edgelin.runtime.weights import shared_initializers

State = dict[str, np.ndarray]
FLOATS = ("float32", "float16", "float64")
MAX_THREADS = 1024


class LiveState(Mapping):
    """The state a stateful back end holds after `Session.forward`: read from it only when asked.

    It is a read-only mapping like a `State`; reading it (`dict(state)`, `save_state`) copies the
    back end's variables. A step run from it advances it in place: an unread LiveState is then gone
    (reading it raises), so copy it with `dict(state)` first to keep it. A step run from another
    state (another thread's sequence, a restore) first copies it out, so it stays usable.
    """

    def __init__(self, session: "Session", version: int) -> None:
        self._session, self._version, self._arrays = session, version, None

    @property
    def current(self) -> bool:
        return self._session._version == self._version

    def _read(self) -> State:
        with self._session._lock:
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


def _shape(dims: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_options(package_dir: object, backend: object, threads: object, device: object, graphs: object,
                   flags: dict[str, object]) -> None:
    if not isinstance(package_dir, (str, os.PathLike)):
        raise EdgelinError(f"package_dir must be a path, not {type(package_dir).__name__}")
    if not isinstance(backend, str):
        raise EdgelinError(f"backend must be a back-end name, not {type(backend).__name__}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or not 1 <= threads <= MAX_THREADS):
        raise EdgelinError(f"threads must be an integer in [1, {MAX_THREADS}] or None, not {threads!r:.40}")
    if device is not None and (not isinstance(device, str) or not device.strip()):
        raise EdgelinError(f"device must be a device name or None, not {device!r:.40}")
    if graphs is not None and (not isinstance(graphs, dict) or not graphs
                               or not all(k in ("decode", "prefill") and isinstance(v, bytes) for k, v in graphs.items())):
        raise EdgelinError("graphs must map 'decode' / 'prefill' to serialized ONNX bytes")
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise EdgelinError(f"{name} must be True or False, not {flag!r:.40}")


class Session:
    """Run a model package's step graphs on one back end. Safe to share between threads.

    Args:
        package_dir: the package directory (checksums are verified before loading).
        backend: registered back-end name ("ort", "openvino", "openvino-stateful", "tvm"; see
            `edgelin.runtime.backends`).
        threads: intra-op threads for the back end (None: the back end's default).
        device: device name for back ends that have one (OpenVINO: "CPU", "NPU"); None: default.
        graphs: serialized ONNX graphs to run instead of the package's files (ort only; only these
            graphs are loaded, and they may have more outputs than the package names): a probe of
            the package with extra outputs, or of a graph quantized in memory.
        states: the state entries of `graphs` (manifest.json form) when they differ from the package's.
        shared_weights: `graphs` read the package's weights file as external data, under the package's
            initializer names (a probe with extra outputs): one memory map of it serves them.
        prepack: let a back end keep a private repacked copy of the weights where it is faster
            (ORT's decode graph); False keeps one copy of the weights in memory.
        trust_native_code: allow a back end that loads native code from the package (tvm: a shared
            library, whose constructors run when it is loaded). Off by default: packages are data.
        check_finite: refuse NaN or Inf in the states fed to `forward` and in every step's logits
            (a pass over each; turn off for benchmarks).
    Raises:
        EdgelinError: a bad argument, an unverifiable package, graphs whose inputs and outputs
            (names, element types, static dimensions) differ from the manifest.
    Example:
        >>> s = Session("out/tiny-gla")  # doctest: +SKIP
        >>> state = s.new_state(batch=1)
        >>> logits, state = s.forward(np.array([[72, 105]]), state)
        >>> logits.shape
        (1, 2, 256)
    """

    def __init__(self, package_dir: str | os.PathLike, backend: str = "ort", threads: int | None = None,
                 device: str | None = None, *, graphs: dict[str, bytes] | None = None,
                 states: list[dict] | None = None, shared_weights: bool = False, prepack: bool = True,
                 trust_native_code: bool = False, check_finite: bool = True) -> None:
        _check_options(package_dir, backend, threads, device, graphs,
                       {"shared_weights": shared_weights, "prepack": prepack, "trust_native_code": trust_native_code,
                        "check_finite": check_finite})
        self.package_dir = Path(package_dir)
        self.manifest: Manifest = read_package(self.package_dir)
        self.backend, self.check_finite = backend, check_finite
        self.probe = graphs is not None
        if states is not None:
            self.manifest.states = [state_spec(s) for s in check_states(Checker("states"), states)]
        cls = get_backend(backend)
        if device is not None and not getattr(cls, "has_device", False):
            raise EdgelinError(f"the {backend} back end runs on the CPU and takes no device (got {device!r:.40})")
        if graphs is not None and backend != "ort":
            raise EdgelinError(f"in-memory graphs run on the ort back end, not {backend}")
        if graphs is not None and not set(graphs) <= set(self.manifest.graphs):
            raise EdgelinError(f"graphs names a graph the package does not have: {sorted(set(graphs) - set(self.manifest.graphs))[0]}")
        files = (cls.graph_files(self.manifest) if hasattr(cls, "graph_files")
                 else {name: g.file for name, g in self.manifest.graphs.items()})
        files = {name: spec if isinstance(spec, dict) else {"file": spec} for name, spec in files.items()
                 if name in ("decode", "prefill", "verify") and (graphs is None or name in graphs)}
        # the verify graph is loaded on first use (`verify`): decode-only users pay nothing for it
        self._verify_spec = files.pop("verify", None) if graphs is None and not getattr(cls, "stateful", False) else None
        files.pop("verify", None)
        if not prepack:
            files = {name: spec | {"prepack": False} if "prepack" in spec else spec for name, spec in files.items()}
        native = bool(getattr(cls, "native_code", False))
        if native and not trust_native_code:
            raise EdgelinError(
                f"the {backend} back end loads native code from the package ({next(iter(files.values()))['file']}), "
                "which runs with your privileges; if you trust who made the package, pass --trust-native-code "
                "(CLI) or trust_native_code=True (Python)")
        options = {"threads": None if threads is None else int(threads)} | ({"device": device} if device else {}) \
            | ({"trust_native_code": True} if native else {})
        # one copy of the weights for both graphs where the back end can take arrays (docs/FORMAT.md)
        shared = shared_initializers(self.package_dir, self.manifest) \
            if getattr(cls, "shares_weights", False) and (graphs is None or shared_weights) else {}
        if graphs is not None and shared_weights:
            options["external_dir"] = self.package_dir
        self._load = lambda name, spec: cls(graphs[name] if graphs is not None else self.package_dir / spec["file"],
                                            **options, **{k: self.package_dir / v if k == "weights" else v
                                                          for k, v in spec.items() if k != "file"},
                                            **({"initializers": shared[name]} if shared.get(name) else {}))
        self.graphs = {name: self._load(name, spec) for name, spec in files.items()}
        self.stateful = bool(getattr(cls, "stateful", False))
        # window rings a decode step may write in place (`forward(donate=True)`): key and value of
        # each layer with a `seen` count, on a back end that can
        rings = ring_windows(self.manifest.states)
        self._rings = {s.input: s.output for s in self.manifest.states if s.layer in rings and s.kind in ("key", "value")} \
            if getattr(cls, "writes_in_place", False) and graphs is None else {}
        # the one batch the graphs accept, if fixed (compiled back ends, profile exports)
        self.batch = getattr(next(iter(self.graphs.values())), "batch", None) or (self.manifest.raw.get("profile") or {}).get("batch")
        # stateful back ends only: the live state's version, the graph holding it, the LiveState (weakly)
        self._version, self._holder, self._live = 0, None, lambda: None
        self._lock = threading.RLock()  # a stateful back end's state is one for all threads
        for name, graph in self.graphs.items():
            self._check_graph(name, graph, f"{files[name]['file']} in {self.package_dir}")

    def _check_graph(self, name: str, graph, where: str) -> None:
        """The graph's inputs and outputs against the manifest: names, then element types and static dims."""
        m = self.manifest
        tokens = m.graphs[name].tokens
        want_in = {"input_ids"} | {s.input for s in m.states}
        want_out = {"logits"} | {s.output if name != "verify" else steps_output(s.output) for s in m.states}
        checks = [("input", want_in, graph.input_names), ("output", want_out, graph.output_names)]
        if self.stateful:
            checks = [("input", {"input_ids"}, graph.input_names), ("output", {"logits"}, graph.output_names),
                      ("state variable", {s.input for s in m.states}, graph.state_names)]
        for kind, want, have in checks:
            missing, extra = sorted(want - set(have)), sorted(set(have) - want)
            if self.probe and kind == "output":
                extra = []
            if missing or extra:
                what = f"lacks {kind} {missing[0]}" if missing else f"has unexpected {kind} {extra[0]}"
                raise EdgelinError(f"{where} {what} (see manifest.json)")
        expect = {"input_ids": (("int64",), (tokens,)), "logits": (FLOATS, (tokens, m.vocab_size))}
        for s in m.states:  # a stateful back end's variables: dtype None (integer states are held as f32)
            expect[s.input] = expect[s.output] = ((s.dtype,), tuple(s.shape[1:]))
            expect[steps_output(s.output)] = ((s.dtype,), (tokens, *s.shape[1:]))
        for tensor, (dtype, dims) in getattr(graph, "signature", {}).items():
            if tensor not in expect:
                continue
            dtypes, want = expect[tensor]
            if dtype is not None and dtype not in dtypes:
                raise EdgelinError(f"{where}: {tensor} is {dtype}; manifest.json says {dtypes[0]}")
            if dims is not None and (len(dims) != len(want) + 1
                                     or any(h is not None and h != w for h, w in zip(dims[1:], want))):
                raise EdgelinError(f"{where}: {tensor} has shape {_shape(dims)}; manifest.json says "
                                   f"{_shape((None, *want))}")

    @property
    def vocab_size(self) -> int:
        """Number of token ids the graphs accept."""
        return self.manifest.vocab_size

    @property
    def prefill_tokens(self) -> int:
        """Chunk length of the prefill graph (1 when the package has only a decode graph)."""
        return self.manifest.graphs["prefill"].tokens if "prefill" in self.graphs else 1

    @property
    def verify_tokens(self) -> int:
        """K of the verify graph (`verify`), 0 when the package has none or the back end cannot run it."""
        return self.manifest.graphs["verify"].tokens if self._verify_spec is not None else 0

    def verify(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, list[State]]:
        """Feed `ids` [B, K] (K = `verify_tokens`) after `state` through the verify graph: K decode steps
        in one run. Returns the logits [B, K, V] and the state after each position (K states): what
        K `forward` calls of one token give, in float packages up to rounding and in quantized ones
        with the decode graph's quantization (docs/FORMAT.md). The graph is loaded on the first call.

        Raises:
            EdgelinError: no verify graph, bad ids or state, NaN or Inf (see `check_finite`).
        Example:
            >>> logits, states = s.verify(np.array([[72, 105, 33, 10]]), state)  # doctest: +SKIP
            >>> state = states[1]  # after "Hi"
        """
        K = self.verify_tokens
        if not K:
            raise EdgelinError(f"{self.package_dir} has no verify graph the {self.backend} back end can run "
                               "(export it with --verify-tokens K, K >= 2)")
        ids = self._check(ids, state, finite=self.check_finite)
        if ids.shape[1] != K:
            raise EdgelinError(f"the verify graph takes {K} tokens per run, not {ids.shape[1]}")
        if "verify" not in self.graphs:
            with self._lock:
                if "verify" not in self.graphs:
                    graph = self._load("verify", self._verify_spec)
                    self._check_graph("verify", graph, f"{self._verify_spec['file']} in {self.package_dir}")
                    self.graphs["verify"] = graph
        out = self.graphs["verify"].run({"input_ids": ids, **state})
        steps = {}
        for s in self.manifest.states:
            a, want = out.get(steps_output(s.output)), (ids.shape[0], K, *s.shape_for(1)[1:])
            if a is None or a.shape != want or a.dtype != s.np_dtype:
                got = "nothing" if a is None else f"{a.dtype}{list(a.shape)}"
                raise EdgelinError(f"the verify graph returned {got} for {steps_output(s.output)}; manifest.json "
                                   f"says {s.dtype}{list(want)}")
            steps[s.input] = a
        logits = self._check_logits("verify", out.get("logits"), ids)
        # views of the stacked outputs (contiguous for one sequence): nothing is copied
        return logits, [{name: np.ascontiguousarray(a[:, t]) for name, a in steps.items()} for t in range(K)]

    def new_state(self, batch: int = 1) -> State:
        """All-zero states for `batch` sequences, keyed by graph input name."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise EdgelinError(f"batch must be an integer >= 1, not {batch!r:.40}")
        try:
            return {s.input: np.zeros(s.shape_for(int(batch)), s.np_dtype) for s in self.manifest.states}
        except (MemoryError, ValueError):
            raise EdgelinError(f"the state of {batch} sequences does not fit in memory") from None

    def _check(self, ids: np.ndarray, state: State, finite: bool) -> np.ndarray:
        try:
            ids = np.asarray(ids)
        except (ValueError, TypeError):
            raise EdgelinError("ids must be a 2-D integer array [batch, tokens]") from None
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise EdgelinError(f"ids must be a 2-D integer array [batch, tokens], got {ids.dtype} {ids.shape}")
        if ids.shape[0] < 1 or ids.shape[1] < 1:
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
                state._read()  # raises unless it was read (or kept) before it went stale
            return np.ascontiguousarray(ids, dtype=np.int64)
        have = check_state(state, self.manifest.states, finite=finite)
        if have != batch:
            raise EdgelinError(f"ids have batch {batch} but the state was made for batch {have}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def _step(self, name: str, ids: np.ndarray, state: State, in_place: bool = False) -> tuple[np.ndarray, State]:
        if self.stateful:
            logits, state = self._stateful_step(name, ids, state)
        else:
            out, state = self._run(name, ids, state, self._rings if in_place and name == "decode" else None)
            logits = out["logits"]
        return self._check_logits(name, logits, ids), state

    def _check_logits(self, name: str, logits: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
        if logits is None:
            raise EdgelinError(f"the {name} graph returned no logits")
        if logits.shape != (*ids.shape, self.vocab_size):
            raise EdgelinError(f"the {name} graph returned logits of shape {list(logits.shape)}, not "
                               f"{[*ids.shape, self.vocab_size]} (its vocabulary differs from manifest.json)")
        if self.check_finite and not all_finite(logits):
            raise EdgelinError(f"the {name} graph produced NaN or Inf logits (the weights or the state are broken)")
        return logits

    def run_graph(self, name: str, ids: np.ndarray, state: State) -> tuple[dict[str, np.ndarray], State]:
        """One run of graph `name` ("decode" or "prefill", its exact token count): every output, and the new state.

        Stateless back ends only; the outputs are not checked for NaN or Inf.
        """
        if not isinstance(name, str) or name not in self.graphs:
            raise EdgelinError(f"this session has no graph {name!r:.40}; it has {', '.join(self.graphs)}")
        if self.stateful:
            raise EdgelinError(f"run_graph needs states in and out; the {self.backend} back end keeps them "
                               "inside (use forward)")
        ids = self._check(ids, state, finite=False)
        if ids.shape[1] != self.manifest.graphs[name].tokens:
            raise EdgelinError(f"the {name} graph takes {self.manifest.graphs[name].tokens} tokens per run, "
                               f"not {ids.shape[1]}")
        return self._run(name, ids, state)

    def _run(self, name: str, ids: np.ndarray, state: State,
             in_place: dict[str, str] | None = None) -> tuple[dict[str, np.ndarray], State]:
        feeds = {"input_ids": np.ascontiguousarray(ids), **state}
        out = self.graphs[name].run(feeds, in_place) if in_place else self.graphs[name].run(feeds)
        for s in self.manifest.states:
            a = out.get(s.output)
            if a is None or a.shape != s.shape_for(ids.shape[0]) or a.dtype != s.np_dtype:
                got = "nothing" if a is None else f"{a.dtype}{list(a.shape)}"
                raise EdgelinError(f"the {name} graph returned {got} for {s.output}; manifest.json says "
                                   f"{s.dtype}{list(s.shape_for(ids.shape[0]))}")
        return out, {s.input: out[s.output] for s in self.manifest.states}

    def _stateful_step(self, name: str, ids: np.ndarray, state: State) -> tuple[np.ndarray, LiveState]:
        graph = self.graphs[name]
        if not (isinstance(state, LiveState) and state._session is self and state.current):
            live = self._live()
            if live is not None and live.current and live._arrays is None:
                live._arrays = self._read_live(check=False)  # its owner may still use it (another thread, say)
            graph.set_state(dict(state))  # restore: a snapshot, a fresh new_state(), a saved file
        elif self._holder != name:  # hand the live state from prefill to decode (or back)
            graph.set_state(self.graphs[self._holder].get_state())
        logits = graph.run({"input_ids": np.ascontiguousarray(ids)})["logits"]
        self._version += 1
        live = LiveState(self, self._version)
        self._holder, self._live = name, weakref.ref(live)
        return logits, live

    def _read_live(self, check: bool = True) -> State:
        live = self.graphs[self._holder].get_state()
        state = {s.input: live[s.input].astype(s.np_dtype, copy=False) for s in self.manifest.states}
        if check and self.check_finite:
            check_state(state, self.manifest.states)
        return state

    def forward(self, ids: np.ndarray, state: State, logits: Literal["all", "last"] = "all",
                donate: bool = False) -> tuple[np.ndarray, State]:
        """Feed `ids` [B, T] after `state`; return logits [B, T, V] and the new state.

        Full chunks of `prefill_tokens` go through the prefill graph, the remainder token by
        token through decode, so the result is exact (no padding). With `logits="last"` only the
        last position's logits are kept ([B, 1, V]), so memory does not grow with T. `state` is not
        modified unless donated; with a stateful back end the returned state is a `LiveState`.

        `donate=True` gives `state` up: ONNX Runtime's decode steps then write each window ring's
        new slot straight into its arrays, which the returned state holds, instead of copying every
        ring each step (a sixth of an LFM2-350M step). Do not use `state` after that. A decode step
        may write its ring in place whatever order the graph runs in: the one slot it writes holds
        the token a window behind, which that step's query does not see. Decode steps after the
        first in one call (a prompt's tail) write in place either way: those states are this
        call's own.

        Raises:
            EdgelinError: bad ids or state, NaN or Inf in the state or the logits (see `check_finite`).
        """
        if not isinstance(logits, str) or logits not in ("all", "last"):
            raise EdgelinError(f"logits must be 'all' or 'last', not {logits!r:.40}")
        if not isinstance(donate, bool):
            raise EdgelinError(f"donate must be True or False, not {donate!r:.40}")
        with self._lock if self.stateful else contextlib.nullcontext():
            ids = self._check(ids, state, finite=self.check_finite)
            T, out = ids.shape[1], []
            chunk, pos = self.prefill_tokens, 0
            owned = donate  # may this call's next step write into the arrays of `state`?
            while "prefill" in self.graphs and T - pos >= chunk:
                lg, state = self._step("prefill", ids[:, pos:pos + chunk], state)
                out.append(lg if logits == "all" else lg[:, -1:])
                if logits == "last":
                    del out[:-1]
                pos, owned = pos + chunk, True
            for t in range(pos, T):
                lg, state = self._step("decode", ids[:, t:t + 1], state, in_place=owned)
                owned = True
                out.append(lg)
                if logits == "last":
                    del out[:-1]
        return (out[0] if len(out) == 1 else np.concatenate(out, axis=1)), state
