"""One weights file for every step graph of a package: each distinct tensor stored once (docs/FORMAT.md).

The decode and prefill graphs hold the same weights under different initializer names. `save_graphs`
writes them as ONNX external data into one `weights.bin`, a tensor identical (dtype, shape, bytes)
in several graphs stored once, and returns the manifest's `weights` index: where each tensor lies
and its name in each graph, so a runtime can hand both sessions one copy (runtime/weights.py).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgelin.runtime.package import sha256_file
from edgelin.runtime.weights import ALIGN, WEIGHTS_FILE

MIN_BYTES = 1024  # smaller initializers (scales, shape constants) stay inside the graph
# Types numpy has; others (INT4 / UINT4 QDQ weights) stay inside the graph: OpenVINO's and TVM's
# ONNX readers size external 4-bit data at one byte per element and refuse the file.
_NUMPY_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8,
                TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64,
                TensorProto.UINT64, TensorProto.BOOL}


def _raw(t: TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def _external(name: str, dtype: int, shape: tuple[int, ...], entry: dict[str, Any]) -> TensorProto:
    t = TensorProto(name=name, data_type=dtype, dims=shape, data_location=TensorProto.EXTERNAL)
    for k, v in (("location", WEIGHTS_FILE), ("offset", str(entry["offset"])), ("length", str(entry["length"]))):
        t.external_data.add(key=k, value=v)
    return t


def initializers_as_inputs(graph: onnx.GraphProto, which: Callable[[TensorProto], bool]) -> None:
    """Turn the initializers `which` selects into graph inputs of their type and shape, in place."""
    moved = [t for t in graph.initializer if which(t)]
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    kept = [t for t in graph.initializer if not which(t)]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def check_weighted_model(proto: onnx.ModelProto) -> None:
    """onnx.checker on a graph whose weights may lie outside it: those are checked as inputs of their
    type and shape (the checker would look for their file relative to the working directory)."""
    checked = proto
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        checked = onnx.ModelProto()
        checked.CopyFrom(proto)
        initializers_as_inputs(checked.graph, lambda t: t.data_location == TensorProto.EXTERNAL)
    onnx.checker.check_model(checked)


class WeightStore:
    """The package's weights file being written: each distinct tensor once, 64-byte aligned, and its index.

    A tensor is the same as one already stored when its key is: the caller's key (exporters/fold.py
    keys a weight by the parameter it holds), or else its dtype, shape and SHA-256.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / WEIGHTS_FILE
        self._blob = open(self.path, "wb")
        self._stored: dict[Any, dict[str, Any]] = {}
        self._offset = 0
        self._names: dict[str, set[str]] = {}  # graph -> initializers reading the store

    def external(self, graph: str, name: str, array: np.ndarray, key: Any = None) -> TensorProto:
        """Store `array` (unless stored already) and return initializer `name` of `graph` reading it."""
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        key = key if key is not None else (array.dtype.str, array.shape, hashlib.sha256(data).digest())
        entry = self._stored.get(key)
        if entry is None:
            pad = -self._offset % ALIGN
            self._blob.write(b"\0" * pad)
            self._blob.write(data)
            self._offset += pad
            entry = self._stored[key] = {"offset": self._offset, "length": len(data), "dtype": array.dtype.name,
                                         "shape": list(array.shape), "names": {}}
            self._offset += len(data)
        entry["names"][graph] = name
        self._names.setdefault(graph, set()).add(name)
        return _external(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, entry)

    def reuse(self, graph: str, name: str, key: Any) -> TensorProto | None:
        """Initializer `name` of `graph` reading the tensor stored under `key`; None when there is none."""
        entry = self._stored.get(key)
        if entry is None:
            return None
        entry["names"][graph] = name
        self._names.setdefault(graph, set()).add(name)
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(entry["dtype"]))
        return _external(name, dtype, tuple(entry["shape"]), entry)

    def holds(self, graph: str, name: str) -> bool:
        """Whether initializer `name` of `graph` reads this store."""
        return name in self._names.get(graph, ())

    def close(self) -> None:
        self._blob.close()

    def index(self, graph_files: dict[str, Path]) -> dict[str, Any]:
        """The manifest's `weights` entry, for the graphs saved at `graph_files` (graph name -> path)."""
        self.close()
        return {"file": WEIGHTS_FILE, "graphs": {name: sha256_file(path) for name, path in graph_files.items()},
                "tensors": list(self._stored.values())}


def save_graphs(protos: dict[str, onnx.ModelProto], files: dict[str, str], out: Path,
                store: WeightStore | None = None) -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    """Write each graph to `out / files[name]` with its large initializers in the shared `out / weights.bin`.

    Args:
        protos: graph name ("decode", "prefill") -> model, initializers held in memory or already
            in `store`.
        files: graph name -> package-relative file name.
        out: a scratch directory (the package is assembled from it by `write_package`).
        store: the weights file of `out` when the graphs were built into it (quantize/package.py);
            a new one otherwise.
    Returns:
        ({package file name: path} including weights.bin, the manifest's `weights` entry).
    """
    if store is None:
        store = WeightStore(out)
    for name, proto in protos.items():
        for t in proto.graph.initializer:
            if t.data_location == TensorProto.EXTERNAL:
                if store.holds(name, t.name):
                    continue
                raise ValueError(f"{files[name]}: initializer {t.name} has its external data unloaded")
            if t.data_type not in _NUMPY_TYPES:
                continue
            data = _raw(t)
            if len(data) < MIN_BYTES:
                continue
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
            t.CopyFrom(store.external(name, t.name, np.frombuffer(data, dtype).reshape(tuple(t.dims))))
    paths: dict[str, Path | bytes] = {WEIGHTS_FILE: store.path}
    for name, proto in protos.items():
        path = out / files[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
        paths[files[name]] = path
    return paths, store.index({name: paths[files[name]] for name in protos})
