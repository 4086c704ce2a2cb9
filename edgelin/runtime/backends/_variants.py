"""Back-end variants a package carries: the manifest's `backends` section (see docs/FORMAT.md)."""
from __future__ import annotations

from typing import Any

from edgelin.errors import EdgelinError
from edgelin.runtime.package import STEP_GRAPHS, Manifest
from edgelin.runtime.schema import short


def source_digests(manifest: Manifest) -> dict[str, str]:
    """sha256 of each ONNX step graph (decode, prefill) by graph name."""
    return {name: manifest.files[g.file] for name, g in manifest.graphs.items()}


def compiled_graphs(manifest: Manifest) -> list[str]:
    """The graphs a compiled back end builds and runs: decode and prefill (not the verify graph)."""
    return [name for name in manifest.graphs if name in STEP_GRAPHS]


def backend_variant(manifest: Manifest, backend: str, variant: str, *, hint: str) -> dict[str, Any]:
    """The manifest entry `backends[backend][variant]`, checked against the package's ONNX graphs.

    Raises EdgelinError naming `hint` (the command that builds it) when it is missing or stale.
    """
    entry = ((manifest.raw.get("backends") or {}).get(backend) or {}).get(variant)
    if entry is None:
        raise EdgelinError(f"the package has no {backend} {variant} graphs; build them with `{hint}`")
    if not isinstance(entry, dict) or entry.get("source") != source_digests(manifest):
        raise EdgelinError(f"the package's {backend} {variant} graphs were built from other ONNX graphs; "
                           f"rebuild them with `{hint}`")
    for name in compiled_graphs(manifest):  # every file it names must be a checked package file
        spec = entry.get(name)
        file = spec.get("file") if isinstance(spec, dict) else spec
        for f in (file, *([entry["weights"]] if "weights" in entry else [])):
            if not isinstance(f, str) or f not in manifest.files:
                raise EdgelinError(f"the package's {backend} {variant} entry names {short(f)} for {name}, "
                                   "which is not a file listed in manifest.json")
    return entry
