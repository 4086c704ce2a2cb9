"""The model package on disk: manifest.json as data, checksummed reads, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelin.atomic import atomic_dir
from edgelin.errors import EdgelinError
from edgelin.runtime.schema import (
    Checker, check_generation, check_states, check_tokenizer_spec, check_weights_index, read_json_file, short,
)

FORMAT_VERSION = 2  # 2: conv_state channel-last [batch, kernel - 1, channels] (1: [batch, channels, kernel - 1])
READABLE_VERSIONS = (1, 2)  # a state's layout only matters to code that looks inside it; the graphs carry their own
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 32 << 20
MAX_FILE_BYTES = 16 << 30  # per package file; EDGELIN_MAX_FILE_BYTES overrides it
MAX_VOCAB = 1 << 24
MAX_TOKENS = 1 << 16  # of a prefill graph
# the step graphs every back end runs; the verify graph (speculative decoding) runs on ONNX Runtime
STEP_GRAPHS = ("decode", "prefill")


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the step graph: its input/output names, layer, kind, shape, dtype."""

    input: str
    output: str
    layer: int
    kind: str
    shape: tuple[int | str, ...]  # "batch" marks the batch dimension
    dtype: str = "float32"

    def shape_for(self, batch: int) -> tuple[int, ...]:
        """The concrete shape of this state for `batch` sequences."""
        return tuple(batch if d == "batch" else int(d) for d in self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        """The state's dtype as a numpy dtype."""
        return np.dtype(self.dtype)


def steps_output(output: str) -> str:
    """The verify graph's output for the state `output` ("present.{i}.{kind}"): its value after each of
    the graph's K tokens, stacked on axis 1, [batch, K, ...] (docs/FORMAT.md)."""
    return f"{output}.steps"


def position_output(output: str, position: int) -> str:
    """Inside the verify graph: the state `output` after `position` (0-based), which the next position
    reads; the output of its hand-off node, stacked into `steps_output` (docs/FORMAT.md)."""
    return f"{output}.{position}"


def state_spec(entry: dict[str, Any]) -> StateSpec:
    """A StateSpec from a `states` entry of manifest.json (checked by `schema.check_states`)."""
    return StateSpec(entry["input"], entry["output"], entry["layer"], entry["kind"], tuple(entry["shape"]),
                     entry.get("dtype", "float32"))


@dataclass(frozen=True)
class GraphSpec:
    """One step graph of the package: its file and its fixed token count."""

    file: str
    tokens: int


@dataclass
class Manifest:
    """A typed view of manifest.json (format version 2, see docs/FORMAT.md).

    Fields the runtime does not interpret (architecture, precision, ...) are kept
    as plain JSON; `raw` holds the whole document as read.
    """

    format_version: int
    vocab_size: int
    tokenizer: dict[str, Any]
    graphs: dict[str, GraphSpec]
    states: list[StateSpec]
    files: dict[str, str]
    producer: str = ""
    architecture: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest.json") -> "Manifest":
        """Parse and check a manifest dict against the schema of docs/FORMAT.md; a malformed one
        raises EdgelinError naming `where` and the bad field."""
        if not isinstance(d, dict):
            raise EdgelinError(f"{where} is not a JSON object")
        version = d.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise EdgelinError(
                f"{where} has package format version {short(version)}; this edgelin reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))} (re-export the model or upgrade edgelin)"
            )
        for key in ("graphs", "states", "vocab_size", "files"):
            if key not in d:
                raise EdgelinError(f"{where} is missing the field {key!r}")
        c = Checker(where)
        files = {c.name(k, f"files[{short(k)}]"): c.digest(v, f"files.{k}")
                 for k, v in c.mapping(d["files"], "files").items()}
        sizes = d.get("sizes")
        if sizes is not None:
            sizes = {c.name(k, "sizes key"): c.integer(v, f"sizes.{k}") for k, v in c.mapping(sizes, "sizes").items()}
            if set(sizes) != set(files):
                c.fail("sizes", "a map with the same names as 'files'", sorted(set(sizes) ^ set(files))[0])
        vocab = c.integer(d["vocab_size"], "vocab_size", 1, MAX_VOCAB)
        graphs = {}
        for name, g in c.mapping(d["graphs"], "graphs", 16).items():
            c.mapping(g, f"graphs.{c.text(name, 'graphs key')}")
            graphs[name] = GraphSpec(c.name(g.get("file"), f"graphs.{name}.file"),
                                     c.integer(g.get("tokens"), f"graphs.{name}.tokens", 1, MAX_TOKENS))
            if graphs[name].file not in files:
                raise EdgelinError(f"{where}: graph {name!r} file {graphs[name].file} is not listed in 'files'")
            c.mapping(g.get("sites") or {}, f"graphs.{name}.sites")
        if "decode" not in graphs:
            raise EdgelinError(f"{where} lists no 'decode' graph")
        if graphs["decode"].tokens != 1:
            raise EdgelinError(f"{where}: the decode graph must have tokens=1, not {graphs['decode'].tokens}")
        if "verify" in graphs and graphs["verify"].tokens < 2:
            raise EdgelinError(f"{where}: the verify graph must have tokens >= 2, not {graphs['verify'].tokens}")
        states = [state_spec(s) for s in check_states(c, d["states"])]
        tokenizer = check_tokenizer_spec(c, d.get("tokenizer"), vocab, files)
        if d.get("generation") is not None:
            check_generation(c, d["generation"])
        for key in ("producer", "source_layout"):
            if key in d:
                c.text(d[key], key, max_len=1 << 16)
        for key in ("architecture", "precision", "profile", "backends"):
            if d.get(key) is not None:
                c.mapping(d[key], key)
        if "max_context" in d:
            c.integer(d["max_context"], "max_context", 1, 1 << 31)
        if (d.get("profile") or {}).get("batch") is not None:
            c.integer(d["profile"]["batch"], "profile.batch", 1, 1 << 16)
        if d.get("weights") is not None:
            check_weights_index(c, d["weights"], files)
        return cls(version, vocab, tokenizer, graphs, states, files, d.get("producer", ""),
                   d.get("architecture") or {}, d.get("precision") or {}, d)

    def state_layout(self) -> list[tuple[str, list, str]]:
        """(input name, shape, dtype) for every state: what a state snapshot must match."""
        return [(s.input, list(s.shape), s.dtype) for s in self.states]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def max_file_bytes() -> int:
    """The largest package file a reader accepts: EDGELIN_MAX_FILE_BYTES, else 16 GiB."""
    value = os.environ.get("EDGELIN_MAX_FILE_BYTES", "")
    if not value:
        return MAX_FILE_BYTES
    if not value.isdigit():
        raise EdgelinError(f"EDGELIN_MAX_FILE_BYTES must be a number of bytes, not {value!r}")
    return int(value)


def _entries(root: Path) -> set[str]:
    """Every entry of the package that is not a directory (symbolic links included, not followed)."""
    names = set()
    for top, dirs, files in os.walk(root):
        here = Path(top).relative_to(root)
        names |= {(here / n).as_posix() for n in files}
        names |= {(here / n).as_posix() for n in dirs if (Path(top) / n).is_symlink()}  # os.walk does not enter them
    return names


def _regular_file(root: Path, name: str, limit: int) -> int:
    """The size of package file `name`, refusing links, non-files, paths leaving `root` and files over `limit`."""
    path = root / name
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise EdgelinError(f"package {root}: {name} is a symbolic link; packages hold regular files only")
    if not stat.S_ISREG(info.st_mode):
        raise EdgelinError(f"package {root}: {name} is not a regular file")
    if not path.resolve().is_relative_to(root.resolve()):
        raise EdgelinError(f"package {root}: {name} leads outside the package")
    if info.st_size > limit:
        raise EdgelinError(f"package {root}: {name} is {info.st_size} bytes, over the limit of {limit} "
                           "(set EDGELIN_MAX_FILE_BYTES to allow more)")
    return info.st_size


def _read_manifest(root: Path) -> Any:
    return read_json_file(root / MANIFEST, MAX_MANIFEST_BYTES, follow_links=False,
                          missing=f"{root} has no {MANIFEST}; is it a model package?")


def read_package(path: str | os.PathLike) -> Manifest:
    """Read a package's manifest, verifying its schema, format version and every file's size and sha256.

    Args:
        path: the package directory.
    Returns:
        The parsed `Manifest`.
    Raises:
        EdgelinError: unknown format version, a malformed manifest, missing / extra / changed files,
            a file that is a symbolic link, leaves the package or is over the size limit (`max_file_bytes`).
    Example:
        >>> m = read_package("out/tiny-gla")  # doctest: +SKIP
        >>> m.graphs["prefill"].tokens
        64
    """
    if not isinstance(path, (str, os.PathLike)):
        raise EdgelinError(f"a package path must be a string or path, not {type(path).__name__}")
    root = Path(path)
    if not root.is_dir():
        raise EdgelinError(f"{root} is not a model package directory")
    manifest = Manifest.from_dict(_read_manifest(root), where=f"{root / MANIFEST}")
    present = _entries(root) - {MANIFEST}
    for name in sorted(manifest.files):
        if name not in present:
            raise EdgelinError(f"package {root} is missing {name} (listed in {MANIFEST})")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise EdgelinError(f"package {root} has a file not listed in {MANIFEST}: {extra[0]}")
    limit, sizes = max_file_bytes(), manifest.raw.get("sizes") or {}
    for name in sorted(manifest.files):  # sizes first: nothing is read before every file is known to fit
        size = _regular_file(root, name, limit)
        if name in sizes and sizes[name] != size:
            raise EdgelinError(f"checksum mismatch for {name} in {root}: it is {size} bytes, {MANIFEST} says {sizes[name]}")
    for name, digest in sorted(manifest.files.items()):
        try:
            ok = sha256_file(root / name) == digest
        except OSError as e:
            raise EdgelinError(f"cannot read {name} in {root}: {e.strerror}") from None
        if not ok:
            raise EdgelinError(f"checksum mismatch for {name} in {root}")
    return manifest


def _check_name(name: str) -> str:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.as_posix() == MANIFEST:
        raise EdgelinError(f"bad package file name {name!r}: must be a relative path, not {MANIFEST}")
    return p.as_posix()


def write_package(out_dir: str | os.PathLike, files: dict[str, Path | bytes], manifest: dict[str, Any],
                  *, force: bool = False) -> Path:
    """Write a package atomically: build it in a temporary sibling directory, then rename it in.

    Args:
        out_dir: the package directory to create.
        files: package-relative name -> source file path or bytes (graphs, tokenizer.json, report/...).
        manifest: manifest.json fields; `files` (the sha256 map) and `sizes` (bytes) are filled in
            here and `format_version` defaults to the current one.
        force: replace an existing package at `out_dir`.
    Returns:
        `out_dir` as a Path.
    Raises:
        EdgelinError: `out_dir` exists without `force`, a source is unreadable, the manifest is
            malformed. Nothing half-written is left behind.
    Example:
        >>> write_package("out/pkg", {"decode.onnx": Path("d.onnx")}, manifest)  # doctest: +SKIP
    """
    out = Path(out_dir)
    if force and out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise EdgelinError(f"{out} exists and is not a model package; refusing to overwrite it")
    with atomic_dir(out, force=force, what="package") as tmp:
        digests, sizes = {}, {}
        for name, src in files.items():
            rel = _check_name(name)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                if isinstance(src, (bytes, bytearray, memoryview)):
                    dst.write_bytes(bytes(src))
                else:
                    shutil.copyfile(src, dst)
            except OSError as e:
                raise EdgelinError(f"cannot write {rel} into the package {out}: {e.strerror or e}") from None
            digests[rel], sizes[rel] = sha256_file(dst), dst.stat().st_size
        # the manifest may keep its source's version
        doc = {"format_version": FORMAT_VERSION, **manifest, "files": digests, "sizes": sizes}
        Manifest.from_dict(doc, where=f"manifest for {out}")
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


def manifest_fields(manifest: Manifest, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A package's manifest as fields for `write_package`: without `files` and `sizes`, with its own format version."""
    return {k: v for k, v in manifest.raw.items() if k not in ("files", "sizes", *drop)}


def rewrite_package(src: str | os.PathLike, out_dir: str | os.PathLike, *, files: dict[str, Path | bytes] | None = None,
                    update: dict[str, Any] | None = None, drop_files: tuple[str, ...] = (),
                    drop_fields: tuple[str, ...] = (), force: bool = False) -> Path:
    """A new package at `out_dir` made from the package at `src`: its files, replaced or added by `files`,
    without `drop_files` (names, or folders ending in '/'), its manifest fields updated by `update`
    and without `drop_fields`. Dropping `backends` drops the files every back-end entry owns: they
    were built from graphs the rewrite replaces. The source's format version is kept (a rewrite does
    not relabel a version-1 package as the current version).
    """
    root = Path(src)
    m = read_package(root)
    if "backends" in drop_fields:
        drop_files = (*drop_files, *(f for variants in (m.raw.get("backends") or {}).values()
                                     for entry in variants.values() for f in entry.get("files", ())))
    dropped = lambda n: any(n == d or (d.endswith("/") and n.startswith(d)) for d in drop_files)  # noqa: E731
    merged: dict[str, Path | bytes] = {n: root / n for n in m.files if not dropped(n)}
    merged.update(files or {})
    doc = manifest_fields(m, drop=drop_fields)
    doc.update(update or {})
    return write_package(out_dir, merged, doc, force=force)


def package_size_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of every file in the package directory (manifest included)."""
    root = Path(path)
    return sum((root / n).lstat().st_size for n in _entries(root))
