"""One weights file for every step graph of a package: each distinct tensor stored once (docs/FORMAT.md).

The decode and prefill graphs hold the same weights under different initializer names. `save_graphs`
writes them as ONNX external data into one `weights.bin`, a tensor identical (dtype, shape, bytes)
in several graphs stored once, and returns the manifest's `weights` index: where each tensor lies
and its name in each graph, so a runtime can hand both sessions one copy (runtime/weights.py).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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


def save_graphs(protos: dict[str, onnx.ModelProto], files: dict[str, str],
                out: Path) -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    """Write each graph to `out / files[name]` with its large initializers in the shared `out / weights.bin`.

    Args:
        protos: graph name ("decode", "prefill") -> model, initializers held in memory.
        files: graph name -> package-relative file name.
        out: a scratch directory (the package is assembled from it by `write_package`).
    Returns:
        ({package file name: path} including weights.bin, the manifest's `weights` entry).
    """
    stored: dict[tuple, dict[str, Any]] = {}
    offset = 0
    with open(out / WEIGHTS_FILE, "wb") as blob:
        for name, proto in protos.items():
            for t in proto.graph.initializer:
                if t.data_location == TensorProto.EXTERNAL:
                    raise ValueError(f"{files[name]}: initializer {t.name} has its external data unloaded")
                if t.data_type not in _NUMPY_TYPES:
                    continue
                data = _raw(t)
                if len(data) < MIN_BYTES:
                    continue
                key = (t.data_type, tuple(t.dims), hashlib.sha256(data).digest())
                entry = stored.get(key)
                if entry is None:
                    pad = -offset % ALIGN
                    blob.write(b"\0" * pad + data)
                    offset += pad
                    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).name
                    entry = stored[key] = {"offset": offset, "length": len(data), "dtype": dtype,
                                           "shape": list(t.dims), "names": {}}
                    offset += len(data)
                entry["names"][name] = t.name
                t.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", WEIGHTS_FILE), ("offset", str(entry["offset"])), ("length", str(len(data)))):
                    t.external_data.add(key=k, value=v)
    paths: dict[str, Path | bytes] = {WEIGHTS_FILE: out / WEIGHTS_FILE}
    for name, proto in protos.items():
        path = out / files[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
        paths[files[name]] = path
    index = {"file": WEIGHTS_FILE, "graphs": {name: sha256_file(paths[files[name]]) for name in protos},
             "tensors": list(stored.values())}
    return paths, index

