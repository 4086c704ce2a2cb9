"""The package's shared weights file, read once and handed to every graph of a session (docs/FORMAT.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest
from edgelin.runtime.schema import ALIGN  # noqa: F401 (the writers' alignment, exported from here)

WEIGHTS_FILE = "weights.bin"


def shared_initializers(root: Path, manifest: Manifest) -> dict[str, dict[str, np.ndarray]]:
    """Graph name -> {initializer name: read-only array} over one memory map of the weights file.

    Empty when the package has no `weights` index (older packages), or for a graph whose file
    differs from the one the index was written with: that graph then loads its weights itself.
    """
    index = manifest.raw.get("weights")
    if not index:
        return {}
    current = {name: g for name, g in manifest.graphs.items()
               if index.get("graphs", {}).get(name) == manifest.files.get(g.file)}
    if not current:
        return {}
    path = root / index["file"]
    try:
        data = np.memmap(path, np.uint8, mode="r")
    except (OSError, ValueError) as e:  # ValueError: an empty file
        raise EdgelinError(f"cannot map {path}: {e}") from None
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in current}
    for t in index["tensors"]:  # aligned, and each length matches its dtype and shape (schema.check_weights_index)
        offset, length = t["offset"], t["length"]
        dtype = np.dtype(t["dtype"])
        if offset + length > data.size:
            raise EdgelinError(f"{path}: the weights index of manifest.json does not match the file")
        array = data[offset:offset + length].view(dtype).reshape(t["shape"])
        for graph, name in t["names"].items():
            if graph in out:
                out[graph][name] = array
    return out
