"""The model package on disk: manifest.json as data, checksummed reads, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelin.errors import EdgelinError

FORMAT_VERSION = 2  # 2: conv_state channel-last [batch, kernel - 1, channels] (1: [batch, channels, kernel - 1])
READABLE_VERSIONS = (1, 2)  # a state's layout only matters to code that looks inside it; the graphs carry their own
MANIFEST = "manifest.json"


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
        """Parse and check a manifest dict; a malformed one raises EdgelinError naming `where`."""
        if not isinstance(d, dict):
            raise EdgelinError(f"{where} is not a JSON object")
        version = d.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise EdgelinError(
                f"{where} has package format version {version!r}; this edgelin reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))} (re-export the model or upgrade edgelin)"
            )
        try:
            graphs = {k: GraphSpec(str(g["file"]), int(g["tokens"])) for k, g in d["graphs"].items()}
            states = [
                StateSpec(str(s["input"]), str(s["output"]), int(s["layer"]), str(s["kind"]),
                          tuple(s["shape"]), str(s.get("dtype", "float32")))
                for s in d["states"]
            ]
            m = cls(version, int(d["vocab_size"]), dict(d.get("tokenizer") or {"type": "bytes"}),
                    graphs, states, {str(k): str(v) for k, v in d["files"].items()},
                    str(d.get("producer", "")), dict(d.get("architecture") or {}),
                    dict(d.get("precision") or {}), d)
        except KeyError as e:
            raise EdgelinError(f"{where} is missing the field {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise EdgelinError(f"{where} is malformed: {e}") from None
        m._check(where)
        return m

    def _check(self, where: str) -> None:
        if "decode" not in self.graphs:
            raise EdgelinError(f"{where} lists no 'decode' graph")
        for name, g in self.graphs.items():
            if g.file not in self.files:
                raise EdgelinError(f"{where}: graph {name!r} file {g.file} is not listed in 'files'")
            if g.tokens < 1:
                raise EdgelinError(f"{where}: graph {name!r} has tokens={g.tokens}; need >= 1")
        if self.graphs["decode"].tokens != 1:
            raise EdgelinError(f"{where}: the decode graph must have tokens=1, not {self.graphs['decode'].tokens}")
        if self.vocab_size < 1:
            raise EdgelinError(f"{where}: vocab_size must be >= 1, not {self.vocab_size}")
        for s in self.states:
            if s.shape.count("batch") != 1 or s.shape[0] != "batch":
                raise EdgelinError(f"{where}: state {s.input} shape {list(s.shape)} must start with 'batch'")
            try:
                s.np_dtype
            except TypeError:
                raise EdgelinError(f"{where}: state {s.input} has unknown dtype {s.dtype!r}") from None
        weights = self.raw.get("weights")
        if weights is not None and (not isinstance(weights, dict) or weights.get("file") not in self.files):
            raise EdgelinError(f"{where}: the weights file of 'weights' is not listed in 'files'")
        tok_file = self.tokenizer.get("file")
        if tok_file is not None and tok_file not in self.files:
            raise EdgelinError(f"{where}: tokenizer file {tok_file} is not listed in 'files'")

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


def _package_files(root: Path) -> set[str]:
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    return names - {MANIFEST}


def read_package(path: str | os.PathLike) -> Manifest:
    """Read a package's manifest, verifying its format version and every file's sha256.

    Args:
        path: the package directory.
    Returns:
        The parsed `Manifest`.
    Raises:
        EdgelinError: unknown format version, missing / extra / changed files, bad JSON.
    Example:
        >>> m = read_package("out/tiny-gla")  # doctest: +SKIP
        >>> m.graphs["prefill"].tokens
        64
    """
    root = Path(path)
    if not root.is_dir():
        raise EdgelinError(f"{root} is not a model package directory")
    try:
        raw = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgelinError(f"{root} has no {MANIFEST}; is it a model package?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgelinError(f"{root / MANIFEST} is not valid JSON: {e}") from None
    manifest = Manifest.from_dict(raw, where=f"{root / MANIFEST}")
    present = _package_files(root)
    for name in sorted(manifest.files):
        if name not in present:
            raise EdgelinError(f"package {root} is missing {name} (listed in {MANIFEST})")
    extra = sorted(present - set(manifest.files))
    if extra:
        raise EdgelinError(f"package {root} has a file not listed in {MANIFEST}: {extra[0]}")
    for name, digest in sorted(manifest.files.items()):
        if sha256_file(root / name) != digest:
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
        manifest: manifest.json fields; `files` (the sha256 map) is filled in here and
            `format_version` defaults to the current one.
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
    if out.exists() or out.is_symlink():
        if not force:
            raise EdgelinError(f"{out} exists; pass --force to overwrite")
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
            raise EdgelinError(f"{out} exists and is not a model package; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        digests = {}
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
                raise EdgelinError(f"cannot write {rel} into the package: {e}") from None
            digests[rel] = sha256_file(dst)
        doc = {"format_version": FORMAT_VERSION, **manifest, "files": digests}
        Manifest.from_dict(doc, where=f"manifest for {out}")
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "pkg")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "pkg", out)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def package_size_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of every file in the package directory (manifest included)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
