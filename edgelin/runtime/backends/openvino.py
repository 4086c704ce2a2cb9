"""OpenVINO back ends: `openvino` (states in and out) and `openvino-stateful` (states kept inside).

Both read the IR that `edgelin compile PKG --backend openvino` adds to a package (the manifest's
`backends.openvino`). The device name is passed through ("CPU" by default; "NPU" needs static
shapes, so the stateless graphs are reshaped to batch 1 there; the stateful ones already are).
"""
from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.backends import first_line, register_backend
from edgelin.runtime.backends._variants import backend_variant, compiled_graphs
from edgelin.runtime.package import Manifest

DEFAULT_THREADS = 2


@functools.cache
def _core():
    try:
        import openvino as ov
    except ImportError:
        raise EdgelinError("the 'openvino' back end needs openvino: pip install openvino") from None
    return ov, ov.Core()


def _info(port) -> tuple[str | None, tuple[int | None, ...] | None]:
    """(numpy dtype name, dims with None for dynamic ones) of a compiled model's port."""
    try:
        dtype = np.dtype(port.get_element_type().to_dtype()).name
    except Exception:  # an element type numpy has no name for
        dtype = None
    shape = port.get_partial_shape()
    return dtype, None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)


@register_backend("openvino")
class OpenVinoBackend:
    """One OpenVINO IR step graph compiled for `device`.

    Args:
        graph_path: the .xml file (its .bin beside it, unless `weights` is given).
        threads: inference threads (default 2).
        device: OpenVINO device name, "CPU" by default.
        weights: the weights file the IR refers to, when shared by several IR (the variant's `weights`).
    Example:
        >>> s = Session("pkg", backend="openvino", device="CPU")  # doctest: +SKIP
    """

    variant = "stateless"
    stateful = False
    has_device = True

    @classmethod
    def graph_files(cls, manifest: Manifest) -> dict[str, dict]:
        entry = backend_variant(manifest, "openvino", cls.variant, hint="edgelin compile PKG --backend openvino")
        weights = {"weights": entry["weights"]} if "weights" in entry else {}
        return {name: {"file": entry[name], **weights} for name in compiled_graphs(manifest)}

    def __init__(self, graph_path: Path, *, threads: int | None = None, device: str | None = None,
                 weights: Path | None = None) -> None:
        ov, core = _core()
        self.device = device or "CPU"
        try:
            model = core.read_model(str(graph_path), *([str(weights)] if weights else []))
            if self.device != "CPU" and model.is_dynamic():  # NPU: static shapes only
                model.reshape({p.get_any_name(): [1 if d.is_dynamic else d.get_length() for d in p.get_partial_shape()]
                               for p in model.inputs})
            config = {"INFERENCE_NUM_THREADS": DEFAULT_THREADS if threads is None else int(threads),
                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            if self.device == "CPU":
                config["INFERENCE_PRECISION_HINT"] = "f32"  # no silent bf16 on CPUs that have it
            compiled = core.compile_model(model, self.device, config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long texts
            raise EdgelinError(f"OpenVINO cannot load {graph_path} on {self.device}: {first_line(e)}") from None
        self._request = compiled.create_infer_request()
        # the IR's own names: compiling may merge a fused node's internal name into an output's
        # (a tied head's Gemm: {"logits", "/Gemm_output_0"}), and get_any_name may then pick that one
        self._outputs = [(o, m.get_any_name()) for o, m in zip(compiled.outputs, model.outputs)]
        self.input_names = [i.get_any_name() for i in model.inputs]
        self.output_names = [name for _, name in self._outputs]
        shapes = [i.get_partial_shape() for i in compiled.inputs]
        self.batch = None if any(s.is_dynamic for s in shapes) else (shapes[0][0].get_length() if shapes else None)
        self.signature = {name: _info(p) for name, p in zip([*self.input_names, *self.output_names],
                                                             [*compiled.inputs, *compiled.outputs])}
        self._where = graph_path
        self._lock = threading.Lock()  # one infer request: one run at a time

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once (thread-safe); returns every output by name (copies, safe to keep)."""
        with self._lock:
            try:
                result = self._request.infer(feeds, share_inputs=True)
            except Exception as e:  # OpenVINO's RuntimeError subclasses
                raise EdgelinError(f"OpenVINO failed to run {self._where}: {first_line(e)}") from None
            return {name: result[port] for port, name in self._outputs}


@register_backend("openvino-stateful")
class OpenVinoStatefulBackend(OpenVinoBackend):
    """The stateful IR: states are OpenVINO variables (ReadValue/Assign) named like the state inputs.

    `run` takes only `input_ids` and returns only `logits`; `reset`, `get_state` and `set_state`
    (OpenVINO's `reset_state` / `query_state`) zero, read and write the variables. Batch is 1.
    """

    variant = "stateful"
    stateful = True

    def __init__(self, graph_path: Path, *, threads: int | None = None, device: str | None = None,
                 weights: Path | None = None) -> None:
        super().__init__(graph_path, threads=threads, device=device, weights=weights)
        self._variables = {v.name: v for v in self._request.query_state()}
        self.state_names = sorted(self._variables)
        # integer states are held as f32 variables (see exporters/openvino.py): check shapes only
        self.signature |= {name: (None, tuple(v.state.shape)) for name, v in self._variables.items()}

    def reset(self) -> None:
        """Zero every state variable."""
        with self._lock:
            self._request.reset_state()

    def get_state(self) -> dict[str, np.ndarray]:
        """A copy of every state variable, keyed by state input name."""
        with self._lock:
            return {name: np.array(v.state.data, copy=True) for name, v in self._variables.items()}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Overwrite every state variable from `state` (keyed by state input name)."""
        ov, _ = _core()
        with self._lock:
            for name, v in self._variables.items():
                v.state = ov.Tensor(np.ascontiguousarray(state[name], dtype=v.state.data.dtype))
