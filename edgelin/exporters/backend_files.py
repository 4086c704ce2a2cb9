"""Back-end files inside a package: the manifest's `backends` section, added to an existing package.

`backends.<name>.<variant>` (e.g. `openvino.stateful`, `tvm.aarch64`) maps each step graph to a file,
lists every file it owns under `files`, and records the sha256 of the ONNX graphs it was built from
under `source`, so a reader can refuse a variant lowered from other graphs (see docs/FORMAT.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgelin.errors import EdgelinError
from edgelin.runtime.backends._variants import source_digests
from edgelin.runtime.package import read_package, rewrite_package


def attach_backend(package_dir: str | os.PathLike, backend: str, variant: str, entry: dict[str, Any],
                   files: dict[str, Path]) -> Path:
    """Add (or replace) `backends[backend][variant]` and its files, rewriting the package atomically.

    Args:
        package_dir: an existing package; its checksums are verified first.
        backend: "openvino", "tvm", ...
        variant: "stateless", "stateful", "x86_64", "aarch64", ...
        entry: graph name -> package-relative file, plus any fields the back end reads.
        files: package-relative name -> file to copy in (all under `backend/`).
    Returns:
        The package directory.
    """
    root = Path(package_dir)
    manifest = read_package(root)
    for name in files:
        if not name.startswith(f"{backend}/"):
            raise EdgelinError(f"back-end file {name} must live under {backend}/")
    backends = {k: dict(v) for k, v in (manifest.raw.get("backends") or {}).items()}
    old = backends.setdefault(backend, {}).get(variant) or {}
    dropped = tuple(old.get("files", []))
    clash = sorted(set(manifest.files).difference(dropped) & set(files))
    if clash:
        raise EdgelinError(f"{clash[0]} already belongs to another part of {root}")
    backends[backend][variant] = {**entry, "files": sorted(files), "source": source_digests(manifest)}
    # the files are copied into a sibling first, so a failure leaves the package as it was
    return rewrite_package(root, root, files=files, update={"backends": backends}, drop_files=dropped, force=True)
