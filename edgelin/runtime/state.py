"""State snapshots: save a sequence's state to a .npz file and load it back for the same package."""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgelin.atomic import atomic_file
from edgelin.errors import EdgelinError
from edgelin.runtime.backends import first_line
from edgelin.runtime.package import Manifest, StateSpec, max_file_bytes
from edgelin.runtime.schema import short

_FINGERPRINT = "__edgelin_state_layout__"


def state_fingerprint(manifest: Manifest) -> str:
    """sha256 of the package's state layout (names, symbolic shapes, dtypes)."""
    return hashlib.sha256(json.dumps(manifest.state_layout()).encode()).hexdigest()


def all_finite(a: np.ndarray) -> bool:
    """True unless a float array holds NaN or Inf."""
    return a.dtype.kind != "f" or bool(np.isfinite(a).all())


def copy_state(state: Mapping[str, np.ndarray], *, read_only: bool = False) -> dict[str, np.ndarray]:
    """A private copy of `state` (a LiveState is read once), optionally frozen against writes in place.

    Example:
        >>> kept = copy_state(state, read_only=True)  # doctest: +SKIP
    """
    out = {}
    for name, a in dict(state).items():
        a = np.array(a, copy=True, order="C")
        a.flags.writeable = not read_only
        out[name] = a
    return out


def state_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes held by the arrays of `state`."""
    return sum(int(np.asarray(a).nbytes) for a in state.values())


def check_state(state: object, specs: Sequence[StateSpec], *, finite: bool = True) -> int:
    """Check `state` against the package's state specs: every name, dtype and shape, one batch for
    all, and (with `finite`) no NaN or Inf. Returns the state's batch.

    Raises:
        EdgelinError: naming the first state that does not match.
    """
    if not isinstance(state, Mapping):
        raise EdgelinError(f"a state must be a mapping of arrays (use new_state()), not {type(state).__name__}")
    names = {s.input for s in specs}
    if set(state) != names:
        odd = sorted(names ^ set(state), key=str)[0]
        raise EdgelinError(f"state does not match the package (check {short(odd)}); use new_state()")
    batch = None
    for s in specs:
        a = state[s.input]
        if not isinstance(a, np.ndarray):
            raise EdgelinError(f"state {s.input} must be a numpy array, not {type(a).__name__}")
        batch = a.shape[0] if batch is None and a.ndim else batch
        if batch is None or a.shape != s.shape_for(batch) or a.dtype != s.np_dtype:
            raise EdgelinError(f"state {s.input} is {a.dtype}{list(a.shape)}; the package needs "
                               f"{s.dtype}{list(s.shape_for(batch or 1))}")
        if finite and not all_finite(a):
            raise EdgelinError(f"state {s.input} holds NaN or Inf values")
    bad = bad_count(state, specs)
    if bad:
        raise EdgelinError(f"state {bad}")
    return batch or 1


def ring_windows(specs: Sequence[StateSpec]) -> dict[int, int]:
    """{layer: window} of the layers whose `key` and `value` are a window ring (they have a `seen` count)."""
    counted = {s.layer for s in specs if s.kind == "seen"}
    return {s.layer: s.shape[2] for s in specs if s.kind == "key" and s.layer in counted}


def bad_count(state: Mapping[str, np.ndarray], specs: Sequence[StateSpec]) -> str | None:
    """What is wrong with the first window ring's `seen` count in `state`, if anything: it must be a
    whole number in [0, 2 x window) (docs/FORMAT.md), or the ring's writes would land outside it."""
    windows = ring_windows(specs)
    for s in specs:
        if s.kind == "seen" and s.layer in windows:
            a, limit = state[s.input], 2 * windows[s.layer]
            # NaN and Inf fail the bounds
            if a.size and not (a.min() >= 0 and a.max() < limit and np.array_equal(a, np.floor(a))):
                return f"{s.input} must hold whole token counts in [0, {limit}); it holds {a.min():.6g} to {a.max():.6g}"
    return None


def save_state(path: str | os.PathLike, state: Mapping[str, np.ndarray], manifest: Manifest) -> Path:
    """Write `state` to `path` (npz, no pickle), stamped with the manifest's state layout.

    The state is checked first (names, shapes, dtypes, finite); the file is written to a temporary
    sibling and renamed into place.
    Example:
        >>> save_state("chat.state.npz", g.state, session.manifest)  # doctest: +SKIP
    """
    try:
        check_state(state, manifest.states)
    except EdgelinError as e:
        raise EdgelinError(f"{e}; nothing saved") from None
    path = Path(path)
    with atomic_file(path, force=True, what="state file") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in state.items()},
                     **{_FINGERPRINT: np.array(state_fingerprint(manifest))})
    return path


def _header(z: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its .npy header; refuses one claiming more data than the member holds."""
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{member} has .npy format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    if math.prod(shape) * dtype.itemsize > z.getinfo(member).file_size:
        raise ValueError(f"{member} is shorter than its header says")
    return shape, dtype


def _read(z: zipfile.ZipFile, member: str) -> np.ndarray:
    with z.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def load_state(path: str | os.PathLike, manifest: Manifest) -> dict[str, np.ndarray]:
    """Read a snapshot written by `save_state`; refuse one made for a different state layout, and one
    whose arrays have other names, shapes or dtypes, hold NaN or Inf, or exceed the file size limit.
    Array headers are checked before any array is read."""
    path = Path(path)
    members = {f"{s.input}.npy": s for s in manifest.states}
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if names != {*members, f"{_FINGERPRINT}.npy"}:
                raise EdgelinError(f"state file {path} was saved for a different model (its arrays differ)")
            if sum(i.file_size for i in z.infolist()) > max_file_bytes():
                raise EdgelinError(f"state file {path} is larger than the limit of {max_file_bytes()} bytes")
            shape, dtype = _header(z, f"{_FINGERPRINT}.npy")
            if shape != () or dtype.kind != "U" or str(_read(z, f"{_FINGERPRINT}.npy")) != state_fingerprint(manifest):
                raise EdgelinError(f"state file {path} was saved for a different model (state layout differs)")
            batch = None
            for member, s in members.items():
                shape, dtype = _header(z, member)
                batch = shape[0] if batch is None and shape else batch
                if batch is None or shape != s.shape_for(batch) or dtype != s.np_dtype:
                    raise EdgelinError(f"state file {path} has a damaged or missing {s.input}")
            arrays = {s.input: _read(z, member) for member, s in members.items()}
    except FileNotFoundError:
        raise EdgelinError(f"state file {path} does not exist") from None
    except EdgelinError:
        raise
    except Exception as e:  # a damaged zip raises from zipfile, zlib, struct, numpy's .npy reader...
        raise EdgelinError(f"{path} is not a readable state snapshot: {first_line(e)}") from None
    for name, a in arrays.items():
        if not all_finite(a):
            raise EdgelinError(f"state file {path} holds NaN or Inf values in {name}")
    bad = bad_count(arrays, manifest.states)
    if bad:
        raise EdgelinError(f"state file {path}: {bad}")
    return arrays
