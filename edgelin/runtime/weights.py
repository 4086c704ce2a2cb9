"""The package's shared weights file, read once and handed to every graph of a session (docs/FORMAT.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest

WEIGHTS_FILE = "weights.bin"
ALIGN = 64  # every tensor starts on a 64-byte boundary of the file


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
    data = np.memmap(path, np.uint8, mode="r")
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in current}
    for t in index["tensors"]:
        offset, length = int(t["offset"]), int(t["length"])
        dtype = np.dtype(t["dtype"])
        if offset % ALIGN or offset + length > data.size or length != dtype.itemsize * int(np.prod(t["shape"])):
            raise EdgelinError(f"{path}: the weights index of manifest.json does not match the file")
        array = data[offset:offset + length].view(dtype).reshape(t["shape"])
        for graph, name in t["names"].items():
            if graph in out:
                out[graph][name] = array
    return out
