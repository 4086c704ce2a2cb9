"""Back ends that run one step graph: the `Backend` protocol and a name -> class registry.

A back end is one file here, `backends/<name>.py`, whose class is decorated with
`@register_backend("<name>")`; `get_backend("<name>")` imports that file on first use,
so a back end's library (onnxruntime, openvino, tvm) is imported only when asked for. A file may
register variants as `<name>-<variant>` (e.g. `openvino-stateful`); files starting with `_` are helpers.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from edgelin.errors import EdgelinError


@runtime_checkable
class Backend(Protocol):
    """One loaded step graph. Constructed as `cls(graph_path, threads=None, **options)`.

    `run` must be safe to call from several threads at once (lock inside if the library is not).

    Optional parts, used by `Session` when present:
      `graph_files(manifest) -> {graph name: file or {"file": file, **constructor options}}` (classmethod;
      default: the ONNX graphs; an option named `weights` is a package-relative file, passed as a path);
      `shares_weights = True`: the constructor takes `initializers={name: array}`, the package's shared
      weights for that graph (runtime/weights.py), to use without copying;
      `batch`: the one batch size the compiled graph accepts (None: any);
      `signature = {tensor name: (numpy dtype name or None, dims with None where symbolic, or None)}`: what
      the graph declares for its inputs, outputs and state variables, checked against the manifest at load;
      `has_device = True`: the constructor takes `device=`;
      `native_code = True`: the back end loads native code from the package; its constructor takes
      `trust_native_code=` and refuses to load without it (Session passes it only when the user opts in);
      `stateful = True` with `reset()`, `get_state() -> State`, `set_state(State)`: the back end keeps the
      states inside the graph, which then takes only `input_ids` and returns only `logits`.
    """

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once on named inputs; return every output by name."""
        ...


BACKENDS: dict[str, type] = {}


def first_line(e: BaseException) -> str:
    """The first line of a library's exception text, for a one-line EdgelinError."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: make a back end available to `Session(..., backend=name)`."""

    def add(cls: type) -> type:
        BACKENDS[name] = cls
        return cls

    return add


def available_backends() -> list[str]:
    """Names of the back-end files present (their libraries may still be missing)."""
    files = {m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_")}
    return sorted(files | set(BACKENDS))


def get_backend(name: str) -> type:
    """The back-end class registered as `name`, importing `backends/<name>.py` if needed."""
    if name not in BACKENDS:
        module = name.split("-")[0]
        if module.isidentifier() and module in available_backends():
            importlib.import_module(f"{__name__}.{module}")
        if name not in BACKENDS:
            raise EdgelinError(f"unknown back end {name!r}; available: {', '.join(available_backends())}")
    return BACKENDS[name]
