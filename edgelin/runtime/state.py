"""State snapshots: save a sequence's state to a .npz file and load it back for the same package."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest

_FINGERPRINT = "__edgelin_state_layout__"


def state_fingerprint(manifest: Manifest) -> str:
    """sha256 of the package's state layout (names, symbolic shapes, dtypes)."""
    return hashlib.sha256(json.dumps(manifest.state_layout()).encode()).hexdigest()


def save_state(path: str | os.PathLike, state: dict[str, np.ndarray], manifest: Manifest) -> Path:
    """Write `state` to `path` (npz, no pickle), stamped with the manifest's state layout.

    The file is written to a temporary sibling and renamed into place.
    Example:
        >>> save_state("chat.state.npz", g.state, session.manifest)  # doctest: +SKIP
    """
    names = {s.input for s in manifest.states}
    if set(state) != names:
        odd = sorted(names ^ set(state))[0]
        raise EdgelinError(f"state does not match the package (check {odd}); nothing saved")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in state.items()},
                     **{_FINGERPRINT: np.array(state_fingerprint(manifest))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | os.PathLike, manifest: Manifest) -> dict[str, np.ndarray]:
    """Read a snapshot written by `save_state`; refuse one made for a different state layout."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise EdgelinError(f"state file {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EdgelinError(f"{path} is not a readable state snapshot: {e}") from None
    stamp = arrays.pop(_FINGERPRINT, None)
    if stamp is None or str(stamp) != state_fingerprint(manifest):
        raise EdgelinError(f"state file {path} was saved for a different model (state layout differs)")
    batch = None
    for s in manifest.states:
        a = arrays.get(s.input)
        batch = a.shape[0] if batch is None and a is not None and a.ndim else batch
        if a is None or a.shape != s.shape_for(batch) or a.dtype != s.np_dtype:
            raise EdgelinError(f"state file {path} has a damaged or missing {s.input}")
    return arrays
