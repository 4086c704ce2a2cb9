"""Hugging Face hub ids (`ORG/NAME`) found in the local Hugging Face cache: offline, nothing is downloaded.

The cache layout is huggingface_hub's: `<cache>/models--ORG--NAME/refs/<branch>` holds a commit hash,
`snapshots/<commit>/` the files (links into `blobs/`). The cache folder is `HF_HUB_CACHE`, else
`HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from edgelin.errors import EdgelinError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
COMMIT = re.compile(r"[0-9a-f]{40}")
REF = re.compile(r"[\w.-]+(/[\w.-]+)*")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def is_hub_id(spec: str) -> bool:
    return HUB_ID.fullmatch(spec) is not None and ".." not in spec


def resolve_hub_id(spec: str, revision: str | None = None) -> Path:
    """The snapshot folder of hub id `spec` at `revision` (a branch, tag or commit hash; default main)."""
    cache = hub_cache_dir()
    org, name = spec.split("/")
    repo = cache / f"models--{org}--{name}"
    if not repo.is_dir():
        raise EdgelinError(f"{spec} is neither a directory nor in the local Hugging Face cache ({cache}); edgelin works offline: "
                           f"download it first (e.g. `hf download {spec}`) or give its directory")
    rev = "main" if revision is None else revision
    if COMMIT.fullmatch(rev):
        commit = rev
    elif REF.fullmatch(rev) and ".." not in rev:
        try:
            commit = (repo / "refs" / rev).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            known = sorted(p.name for p in (repo / "refs").glob("*")) if (repo / "refs").is_dir() else []
            raise EdgelinError(f"{spec} has no revision {rev!r} in the local cache"
                               f" (cached: {', '.join(known) or 'none'})") from None
        if not COMMIT.fullmatch(commit):
            raise EdgelinError(f"{repo / 'refs' / rev} does not hold a commit hash")
    else:
        raise EdgelinError(f"--revision must be a branch, tag or 40-digit commit hash, not {rev!r}")
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise EdgelinError(f"{spec} at {rev} ({commit[:12]}) is not in the local cache: no {snapshot}")
    return snapshot
