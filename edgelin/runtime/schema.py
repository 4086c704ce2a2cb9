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


# --- the source's conventions: the tokenizer's special ids, chat template and generation defaults ---

MAX_TEMPLATE_CHARS = 1 << 17  # one chat template's source (real ones are 1-20 K characters)
MAX_TEMPLATES = 16  # named chat templates of one tokenizer
MAX_EOS_IDS = 64
MAX_NEW_TOKENS = 1 << 31


def check_template(c: Checker, v: Any, path: str) -> str:
    """One chat template's source: a string of 1 to MAX_TEMPLATE_CHARS characters without NUL."""
    if type(v) is not str or not 0 < len(v) <= MAX_TEMPLATE_CHARS or "\0" in v:
        c.fail(path, f"a Jinja template of 1 to {MAX_TEMPLATE_CHARS} characters", v)
    return v


def check_chat_template(c: Checker, v: Any, path: str) -> dict[str, str]:
    """`tokenizer.chat_template`: one template, or an object of named ones ("default", "tool_use", ...),
    as name -> source."""
    if type(v) is str:
        return {"default": check_template(c, v, path)}
    named = c.mapping(v, path, MAX_TEMPLATES)
    if not named:
        c.fail(path, "a template or an object of named templates", v)
    return {c.text(name, f"{path} key", max_len=64): check_template(c, t, f"{path}.{name}") for name, t in named.items()}


def check_tokenizer_spec(c: Checker, spec: Any, vocab: int, files: dict[str, str]) -> dict[str, Any]:
    """The manifest's `tokenizer` (docs/FORMAT.md): its type and file, special ids inside the
    vocabulary, `add_bos`, the special tokens' strings and the chat template."""
    spec = c.mapping(spec or {"type": "bytes"}, "tokenizer")
    c.text(spec.get("type", "bytes"), "tokenizer.type")
    if "file" in spec and c.name(spec["file"], "tokenizer.file") not in files:
        raise EdgelinError(f"{c.where}: tokenizer file {spec['file']} is not listed in 'files'")
    for key in ("bos_id", "eos_id", "pad_id"):
        if spec.get(key) is not None:
            c.integer(spec[key], f"tokenizer.{key}", 0, vocab - 1)
    if "eos_ids" in spec:
        ids = [c.integer(t, f"tokenizer.eos_ids[{i}]", 0, vocab - 1)
               for i, t in enumerate(c.array(spec["eos_ids"], "tokenizer.eos_ids", MAX_EOS_IDS))]
        if not ids or spec.get("eos_id") != ids[0]:
            c.fail("tokenizer.eos_ids", "a list of token ids that starts with eos_id", spec["eos_ids"])
    if "add_bos" in spec and type(spec["add_bos"]) is not bool:
        c.fail("tokenizer.add_bos", "true or false", spec["add_bos"])
    for name, token in c.mapping(spec.get("special_tokens", {}), "tokenizer.special_tokens", 64).items():
        if type(name) is not str or not name.isidentifier() or not name.endswith("_token"):
            c.fail("tokenizer.special_tokens key", "a name ending in _token", name)
        if type(token) is not str or not 0 < len(token) <= MAX_NAME or "\0" in token:
            c.fail(f"tokenizer.special_tokens.{name}", f"a token of 1 to {MAX_NAME} characters", token)
    if "chat_template" in spec:
        check_chat_template(c, spec["chat_template"], "tokenizer.chat_template")
    return spec


def check_generation(c: Checker, gen: Any) -> dict[str, Any]:
    """The manifest's optional `generation` defaults: temperature (0 = greedy), top_k (0 = off),
    top_p in (0, 1], max_new_tokens, max_length."""
    gen = c.mapping(gen, "generation")
    if "temperature" in gen:
        c.number(gen["temperature"], "generation.temperature", 0)
    if "top_k" in gen:
        c.integer(gen["top_k"], "generation.top_k", 0, MAX_NEW_TOKENS)
    if "top_p" in gen and not 0 < c.number(gen["top_p"], "generation.top_p") <= 1:
        c.fail("generation.top_p", "a number in (0, 1]", gen["top_p"])
    for key in ("max_new_tokens", "max_length"):
        if key in gen:
            c.integer(gen[key], f"generation.{key}", 1, MAX_NEW_TOKENS)
    return gen
