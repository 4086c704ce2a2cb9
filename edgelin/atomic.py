"""Every output edgelin writes goes through here: into a temporary sibling, renamed into place when complete.

Temporary names carry the writer's process id (`.NAME.edgelin-tmp-PID-XXXX` beside the output,
`edgelin-KIND-PID-XXXX` in the system temp dir), so a later writer can sweep what a killed one left:
an entry whose process is gone is removed before new work starts. OS failures (missing or read-only
directory, a file in the way, a full disk) become one EdgelinError line naming the output.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgelin.errors import EdgelinError

_SIBLING = re.compile(r"^\..+\.edgelin-tmp-(\d+)-[^/]+$")
_SCRATCH = re.compile(r"^edgelin-[a-z]+-(\d+)-[^/]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a name we cannot judge): leave it
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of dead edgelin writers in `folder`; the paths removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _SIBLING.match(entry.name) or _SCRATCH.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def check_destination(path: str | os.PathLike, *, what: str = "file", force: bool = True, folder: bool = False) -> None:
    """Fail in one line, before any work, when `path` could not be written: it exists without `force`,
    something of the other kind is in the way, or its nearest existing parent is not a writable folder."""
    out = Path(path)
    if (out.exists() or out.is_symlink()) and not force:
        raise EdgelinError(f"{out} exists; pass --force to overwrite")
    if out.exists() and out.is_dir() != folder:
        raise EdgelinError(f"cannot write the {what} {out}: a {'file' if folder else 'directory'} is in the way")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgelinError(f"cannot write the {what} {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgelinError(f"cannot write the {what} {out}: {parent} is not writable")


def _prepare(out: Path, force: bool, what: str, folder: bool) -> list[Path]:
    """Check the destination; create missing parent folders and return those created (to undo on failure)."""
    check_destination(out, what=what, force=force, folder=folder)
    created = []
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    try:
        for folder in reversed(created):
            folder.mkdir()
    except OSError as e:
        _remove_created(created)
        raise EdgelinError(f"cannot write the {what} {out}: {_why(e)}") from None
    sweep_stale(out.parent)
    return created


def _remove_created(created: list[Path]) -> None:
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _temp_name(out: Path) -> str:
    return f".{out.name}.edgelin-tmp-{os.getpid()}-"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, force: bool = False, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any failure nothing is left.

    Example:
        >>> with atomic_file("table.json", force=True) as tmp:  # doctest: +SKIP
        ...     tmp.write_text(table.to_json())
    """
    out = Path(path)
    created = _prepare(out, force, what, folder=False)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_name(out), dir=out.parent)
        os.close(fd)
    except OSError as e:
        _remove_created(created)
        raise EdgelinError(f"cannot write the {what} {out}: {_why(e)}") from None
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _remove_created(created)
        raise EdgelinError(f"cannot write the {what} {out}: {_why(e)}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_created(created)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str, *, force: bool = False, what: str = "file") -> Path:
    """Write `data` (str as UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path, force=force, what=what) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, force: bool = False, what: str = "directory") -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success it replaces `path` (the old one is removed last).

    The caller decides whether an existing `path` may be replaced (e.g. only a package by a package).
    """
    out = Path(path)
    created = _prepare(out, force, what, folder=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_name(out), dir=out.parent))
    except OSError as e:
        _remove_created(created)
        raise EdgelinError(f"cannot write the {what} {out}: {_why(e)}") from None
    old = None
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_name(out), dir=out.parent))
            os.replace(out, old / "old")
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / "old", out)
            raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise EdgelinError(f"cannot write the {what} {out}: {_why(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    finally:
        if old is not None and out.exists():  # else restoring the old one failed: keep it where it is
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A working folder in the system temp dir (`edgelin-KIND-PID-...`), removed afterwards; sweeps dead ones first."""
    sweep_stale(tempfile.gettempdir())
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"edgelin-{kind}-{os.getpid()}-"))
    except OSError as e:
        raise EdgelinError(f"cannot make a working folder in {tempfile.gettempdir()}: {_why(e)}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
