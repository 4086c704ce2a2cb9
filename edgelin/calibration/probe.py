"""The one probe runner: text streams through a package's step graphs on the runtime's `Session`,
states carried from chunk to chunk, with any inner tensors as extra outputs.

Calibration, GPTQ's Hessians, the sensitivity search, SNR and the HTP calibration feeds all stream
text through a package this way; each passes what it wants to see and a callback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from edgelin.runtime.package import read_package
from edgelin.runtime.session import Session, State

OnRun = Callable[[str, dict[str, np.ndarray], dict[str, np.ndarray]], None]  # (graph, feeds, outputs)


class Probe:
    """A package's graphs (or in-memory replacements) run through ONNX Runtime with extra outputs.

    The package's own graphs are read without their weights: the sessions share one memory map of
    the weights file and keep no repacked copy, so a probe holds the weights once.

    Args:
        package_dir: the package (its manifest, tokenizer and, unless `graphs` replaces them, its graphs).
        extra: graph name -> tensor names to read out besides logits and states.
        graphs: graph name -> model to run instead of the package's file (only these graphs load).
        states: the state entries of `graphs` when they differ from the package's (a quantized graph).
        only: the package's graphs to load (default: both), when `graphs` is None.
    """

    def __init__(self, package_dir: str | Path, *, extra: dict[str, Iterable[str]] | None = None,
                 graphs: dict[str, onnx.ModelProto] | None = None, states: list[dict] | None = None,
                 threads: int | None = None, only: Iterable[str] = ("decode", "prefill")):
        root = Path(package_dir)
        m = read_package(root)
        names = [g for g in ("decode", "prefill") if g in m.graphs and (g in graphs if graphs is not None else g in only)]
        serialized = {}
        for g in names:
            proto = graphs[g] if graphs is not None else onnx.load(str(root / m.graphs[g].file), load_external_data=False)
            want = [t for t in (extra or {}).get(g, []) if t not in {o.name for o in proto.graph.output}]
            if want:
                proto = onnx.ModelProto.FromString(proto.SerializeToString()) if graphs is not None else proto
                proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in want)
            serialized[g] = proto.SerializeToString()
        self.session = Session(root, "ort", threads=threads, graphs=serialized, states=states,
                               shared_weights=graphs is None, prepack=False)
        self.manifest = self.session.manifest

    @property
    def chunk(self) -> int:
        """Token count of the prefill graph."""
        return self.manifest.graphs["prefill"].tokens

    def new_state(self, batch: int) -> State:
        return self.session.new_state(batch)

    def run(self, graph: str, ids: np.ndarray, state: State, on_run: OnRun | None = None) -> tuple[dict, State]:
        """One graph run on `ids` [B, tokens of that graph]: all outputs, and the new state."""
        feeds = {"input_ids": ids, **state}
        out, state = self.session.run_graph(graph, ids, state)
        if on_run:
            on_run(graph, feeds, out)
        return out, state

    def prefill_stream(self, ids: np.ndarray, on_run: OnRun, chunks: int | None = None) -> None:
        """Full prefill chunks of `ids` [B, T] (at most `chunks`), zero-started, states carried."""
        C, state = self.chunk, self.new_state(ids.shape[0])
        for c in range(ids.shape[1] // C if chunks is None else min(chunks, ids.shape[1] // C)):
            _, state = self.run("prefill", ids[:, c * C:(c + 1) * C], state, on_run)

    def mixed_stream(self, ids: np.ndarray, on_run: OnRun, decode_every: int = 4,
                     progress: Callable[[int, int], None] | None = None) -> None:
        """Every chunk through prefill, except every `decode_every`-th one (and a short tail), which
        goes token by token through decode; the first chunk, from the zero state, goes through both.
        So both graphs see states from every depth of the stream."""
        has_prefill = "prefill" in self.session.graphs
        C = self.chunk if has_prefill else 1
        n, T = ids.shape
        state = self.new_state(n)
        spans = [(p, min(p + C, T)) for p in range(0, T, C)]
        for i, (a, b) in enumerate(spans):
            use_decode = not has_prefill or b - a < C or i % decode_every == 0
            start = state
            if use_decode:
                for t in range(a, b):
                    _, state = self.run("decode", ids[:, t:t + 1], state, on_run)
            if (i == 0 or not use_decode) and has_prefill and b - a == C:
                _, state = self.run("prefill", ids[:, a:b], start, on_run)
            if progress:
                progress(i + 1, len(spans))
