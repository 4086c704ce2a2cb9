"""ONNX Runtime back end (CPU execution provider, sequential execution).

With a package's shared weights (`initializers`), both sessions use the same arrays. ORT packs the
weights of MatMul-type nodes into a private copy per session (prepacking); the decode and verify
graphs keep that (faster at a few tokens), the prefill graph reads the shared copy unpacked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import first_line, register_backend
from edgelin.runtime.package import Manifest

DEFAULT_THREADS = 2
_DTYPES = {"float": "float32", "double": "float64"}  # ONNX element type names that numpy spells otherwise


def _info(arg) -> tuple[str | None, tuple[int | None, ...] | None]:
    """(numpy dtype name, dims with None for symbolic ones) of an ORT NodeArg."""
    kind = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else None
    dims = None if arg.shape is None else tuple(d if isinstance(d, int) else None for d in arg.shape)
    return _DTYPES.get(kind, kind), dims


@register_backend("ort")
class OrtBackend:
    """One ONNX graph in an onnxruntime InferenceSession.

    Args:
        graph_path: the .onnx file, or a serialized graph (its external data, if any, in `external_dir`).
        threads: intra-op threads (default 2); inter-op execution is sequential.
        initializers: initializer name -> array, used in place of the graph's own (not copied).
        prepack: let ORT repack the weights it is given in `initializers` (a private copy).
        external_dir: where a serialized graph's external data files lie (its package).
    Example:
        >>> b = OrtBackend(Path("pkg/decode.onnx"), threads=1)  # doctest: +SKIP
        >>> out = b.run({"input_ids": ids, **state})  # doctest: +SKIP
    """

    shares_weights = True
    writes_in_place = True  # run(..., in_place=...)

    @classmethod
    def graph_files(cls, manifest: Manifest) -> dict[str, dict]:
        return {name: {"file": g.file, "prepack": name in ("decode", "verify")} for name, g in manifest.graphs.items()}

    def __init__(self, graph_path: Path | bytes, *, threads: int | None = None,
                 initializers: dict[str, np.ndarray] | None = None, prepack: bool = True,
                 external_dir: Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EdgelinError("the 'ort' back end needs onnxruntime: pip install onnxruntime") from None
        self._ort = ort
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
        if external_dir is not None:
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_dir))
        self._where = "an in-memory graph" if isinstance(graph_path, bytes) else str(graph_path)
        try:
            model = graph_path if isinstance(graph_path, bytes) else str(graph_path)
            self._sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            raise EdgelinError(f"onnxruntime cannot load {self._where}: {first_line(e)}") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.signature = {a.name: _info(a) for a in [*self._sess.get_inputs(), *self._sess.get_outputs()]}

    def run(self, feeds: dict[str, np.ndarray], in_place: dict[str, str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph once (thread-safe); returns every output by name.

        `in_place` maps input names to output names whose result ONNX Runtime writes straight into
        the input's array (through I/O binding); that output is the input array itself. Only for an
        output the graph may write before every read of its input is done (see `Session.forward`).
        An input that is not a writeable C-contiguous array gets an output of its own instead.
        """
        try:
            if not in_place:
                return dict(zip(self.output_names, self._sess.run(None, feeds)))
            shared = {i: o for i, o in in_place.items()
                      if feeds[i].flags.c_contiguous and feeds[i].flags.writeable}
            binding = self._sess.io_binding()
            values = {}
            for name, a in feeds.items():
                values[name] = self._ort.OrtValue.ortvalue_from_numpy(a)  # a view of `a`, not a copy
                binding.bind_ortvalue_input(name, values[name])
            order = [o for o in self.output_names if o not in shared.values()]
            for i, o in shared.items():
                binding.bind_ortvalue_output(o, values[i])
            for o in order:
                binding.bind_output(o)
            self._sess.run_with_iobinding(binding)
            out = dict(zip(order, (v.numpy() for v in binding.get_outputs()[len(shared):])))
            return out | {o: feeds[i] for i, o in shared.items()}
        except Exception as e:  # ORT raises its own exception types
            raise EdgelinError(f"onnxruntime failed to run {self._where}: {first_line(e)}") from None

