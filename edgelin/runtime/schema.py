"""Checks for untrusted JSON (manifest.json) and arrays (state snapshots): types, ranges, sizes, depth.

Every failure is an EdgelinError of one line naming where the bad value is.
"""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgelin.errors import EdgelinError

MAX_JSON_DEPTH = 64
MAX_STATE_BYTES = 4 << 30  # all states of one sequence
MAX_NAME = 1024  # characters of a tensor / file name
ALIGN = 64  # every tensor of the shared weights file starts on a 64-byte boundary
DIGEST = re.compile(r"[0-9a-f]{64}")
STATE_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64")
TENSOR_DTYPES = (*STATE_DTYPES, "uint32", "uint64", "bool")
_STRING = re.compile(rb'(?s)"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)')  # unterminated: to the end, so linear
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def read_json_file(path: Path, max_bytes: int, *, missing: str, follow_links: bool = True) -> Any:
    """The JSON document in a file a stranger may have made: a regular file of at most `max_bytes`,
    UTF-8, nested at most MAX_JSON_DEPTH deep; every problem is one EdgelinError (`missing` when there
    is no such file). Without `follow_links`, a symbolic link is refused as not a regular file."""
    try:
        info = path.stat() if follow_links else path.lstat()
    except FileNotFoundError:
        raise EdgelinError(missing) from None
    except OSError as e:
        raise EdgelinError(f"cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):  # a directory, or a FIFO that would block the read
        raise EdgelinError(f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise EdgelinError(f"{path} is over the limit of {max_bytes} bytes")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # it may have grown since the stat
    except OSError as e:
        raise EdgelinError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise EdgelinError(f"{path} is over the limit of {max_bytes} bytes")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise EdgelinError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise EdgelinError(f"{path} is not valid JSON: {e}") from None


def json_depth(data: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """Deepest nesting of JSON `data`, found without parsing it; stops counting past `limit`."""
    marks = np.frombuffer(_NOT_BRACKET.sub(b"", _STRING.sub(b'""', data)), np.uint8)
    deepest, level = 0, 0
    for i in range(0, marks.size, 1 << 20):
        steps = (marks[i:i + (1 << 20)] & 2).astype(np.int64) - 1  # '[' and '{' have bit 1 set, ']' and '}' not
        levels = level + np.cumsum(steps)
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
        if deepest > limit:
            break
    return deepest


def short(v: Any) -> str:
    """A value for an error message: containers by type, scalars by a repr of at most 60 characters."""
    if isinstance(v, (dict, list, tuple)):
        return f"a JSON {'object' if isinstance(v, dict) else 'array'}"
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


class Checker:
    """Typed reads from parsed JSON; `where` prefixes every error (a file name)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, want: str, v: Any) -> None:
        raise EdgelinError(f"{self.where}: {path} must be {want}, not {short(v)}")

    def integer(self, v: Any, path: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if type(v) is not int or not lo <= v <= hi:  # bool is not an int here
            self.fail(path, f"an integer in [{lo}, {hi}]", v)
        return v

    def number(self, v: Any, path: str, lo: float = -math.inf) -> float:
        """A finite JSON number (int or float, not bool) of at least `lo`."""
        if type(v) not in (int, float) or not math.isfinite(v) or v < lo:
            self.fail(path, "a finite number" + (f" >= {lo}" if lo > -math.inf else ""), v)
        return float(v)

    def text(self, v: Any, path: str, choices: tuple[str, ...] | None = None, max_len: int = MAX_NAME) -> str:
        if type(v) is not str or not 0 < len(v) <= max_len or not v.isprintable() or (choices and v not in choices):
            self.fail(path, f"one of {', '.join(choices)}" if choices else f"a printable string of 1 to {max_len} characters", v)
        return v

    def mapping(self, v: Any, path: str, max_len: int = 1 << 20) -> dict:
        return self._sized(v, path, dict, "an object", max_len)

    def array(self, v: Any, path: str, max_len: int = 1 << 20) -> list:
        return self._sized(v, path, list, "an array", max_len)

    def _sized(self, v: Any, path: str, kind: type, what: str, max_len: int) -> Any:
        if type(v) is not kind:
            self.fail(path, what, v)
        if len(v) > max_len:
            self.fail(path, f"{what} of at most {max_len} entries", v)
        return v

    def name(self, v: Any, path: str) -> str:
        """A package file name: relative, normalised, inside the package, not manifest.json."""
        self.text(v, path)
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or p.as_posix() != v or v == "manifest.json" or "\0" in v or "\\" in v:
            self.fail(path, "a normalised relative path inside the package", v)
        return v

    def digest(self, v: Any, path: str) -> str:
        if type(v) is not str or not DIGEST.fullmatch(v):
            self.fail(path, "a sha256 hex digest", v)
        return v


def nbytes(shape: list[int] | tuple[int, ...], dtype: str) -> int:
    """Bytes of a tensor, in Python integers (no overflow)."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_state_entry(c: Checker, s: Any, path: str) -> dict[str, Any]:
    """One `states` entry of manifest.json, with its shape checked: "batch" then positive integers."""
    c.mapping(s, path)
    for key in ("input", "output", "kind"):
        c.text(s.get(key), f"{path}.{key}")
    c.integer(s.get("layer"), f"{path}.layer", 0, 1 << 20)
    shape = c.array(s.get("shape"), f"{path}.shape", 8)
    if len(shape) < 2 or shape[0] != "batch":
        c.fail(f"{path}.shape", '["batch", ...] with at least one more dimension', shape)
    for i, d in enumerate(shape[1:], 1):
        c.integer(d, f"{path}.shape[{i}]", 1, 1 << 31)
    c.text(s.get("dtype", "float32"), f"{path}.dtype", STATE_DTYPES)
    if "policy" in s:
        c.text(s["policy"], f"{path}.policy", ("int", "float"))
    return s


def check_states(c: Checker, states: Any, path: str = "states") -> list[dict[str, Any]]:
    """The `states` list: each entry valid, names unique, one sequence's states within MAX_STATE_BYTES."""
    entries = [check_state_entry(c, s, f"{path}[{i}]") for i, s in enumerate(c.array(states, path, 4096))]
    for key, reserved in (("input", "input_ids"), ("output", "logits")):
        names = [s[key] for s in entries]
        if len(set(names)) != len(names) or reserved in names:
            raise EdgelinError(f"{c.where}: the states' {key} names must be unique and not {reserved}")
    total = sum(nbytes(s["shape"][1:], s.get("dtype", "float32")) for s in entries)
    if total > MAX_STATE_BYTES:
        raise EdgelinError(f"{c.where}: the states of one sequence take {total} bytes; "
                           f"the limit is {MAX_STATE_BYTES} bytes")
    return entries


def check_weights_index(c: Checker, index: Any, files: dict[str, str]) -> None:
    """The optional `weights` index (docs/FORMAT.md, "Shared weights"); runtime/weights.py checks it
    against the file's size when it maps the file."""
    c.mapping(index, "weights")
    file = c.name(index.get("file"), "weights.file")
    if file not in files:
        raise EdgelinError(f"{c.where}: the weights file of 'weights' is not listed in 'files'")
    for g, digest in c.mapping(index.get("graphs", {}), "weights.graphs", 16).items():
        c.digest(digest, f"weights.graphs.{g}")
    for i, t in enumerate(c.array(index.get("tensors"), "weights.tensors")):
        path = f"weights.tensors[{i}]"
        c.mapping(t, path)
        offset = c.integer(t.get("offset"), f"{path}.offset")
        length = c.integer(t.get("length"), f"{path}.length")
        dtype = c.text(t.get("dtype"), f"{path}.dtype", TENSOR_DTYPES)
        shape = [c.integer(d, f"{path}.shape[{j}]", 0, 1 << 40) for j, d in enumerate(c.array(t.get("shape"), f"{path}.shape", 8))]
        if offset % ALIGN or length != nbytes(shape, dtype):
            c.fail(path, f"{ALIGN}-byte aligned with length = its dtype's size x its shape's product", t)
        for g, n in c.mapping(t.get("names"), f"{path}.names", 16).items():
            c.text(n, f"{path}.names.{g}")
