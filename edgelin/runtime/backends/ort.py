"""ONNX Runtime back end (CPU execution provider, sequential execution).

With a package's shared weights (`initializers`), both sessions use the same arrays. ORT packs the
weights of MatMul-type nodes into a private copy per session (prepacking); the decode graph keeps
that (it is faster at one token), the prefill graph reads the shared copy unpacked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import register_backend
from edgelin.runtime.package import Manifest

DEFAULT_THREADS = 2


@register_backend("ort")
class OrtBackend:
    """One ONNX graph in an onnxruntime InferenceSession.

    Args:
        graph_path: the .onnx file.
        threads: intra-op threads (default 2); inter-op execution is sequential.
        initializers: initializer name -> array, used in place of the graph's own (not copied).
        prepack: let ORT repack the weights it is given in `initializers` (a private copy).
    Example:
        >>> b = OrtBackend(Path("pkg/decode.onnx"), threads=1)  # doctest: +SKIP
        >>> out = b.run({"input_ids": ids, **state})  # doctest: +SKIP
    """

    shares_weights = True

    @classmethod
    def graph_files(cls, manifest: Manifest) -> dict[str, dict]:
        return {name: {"file": g.file, "prepack": name == "decode"} for name, g in manifest.graphs.items()}

    def __init__(self, graph_path: Path, *, threads: int | None = None,
                 initializers: dict[str, np.ndarray] | None = None, prepack: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgelinError("the 'ort' back end needs onnxruntime: pip install onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = DEFAULT_THREADS if threads is None else int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        self._initializers = [(n, ort.OrtValue.ortvalue_from_numpy(a)) for n, a in (initializers or {}).items()]
        for name, value in self._initializers:
            opts.add_initializer(name, value)
        if self._initializers and not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        try:
            self._sess = ort.InferenceSession(str(graph_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgelinError(f"onnxruntime cannot load {graph_path}: {first}") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once; returns every output by name."""
        return dict(zip(self.output_names, self._sess.run(None, feeds)))
