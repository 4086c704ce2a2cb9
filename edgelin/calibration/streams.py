"""Calibration text: the shipped sample or a user's file, cut into parallel token streams."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError

MIN_STREAM_TOKENS = 2048  # states must have time to grow; shorter streams are allowed but flagged


def default_text() -> str:
    """The public-domain sample shipped in edgelin/data (first 90% of tinyshakespeare only)."""
    return resources.files("edgelin.data").joinpath("calibration.txt").read_text(encoding="utf-8")


def read_text(path: str | Path | None) -> str:
    """The text of `path`, or the shipped sample for None; empty or undecodable text is an error."""
    if path is None:
        return default_text()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgelinError(f"no such text file: {p}") from None
    except IsADirectoryError:
        raise EdgelinError(f"{p} is a directory; give a text file") from None
    except UnicodeDecodeError as e:
        raise EdgelinError(f"{p} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    if not text.strip():
        raise EdgelinError(f"{p} holds no text; calibration and validation need real text")
    return text


def make_streams(ids: list[int] | np.ndarray, n_streams: int, tokens: int) -> np.ndarray:
    """Cut `ids` into `n_streams` contiguous, non-overlapping streams of `tokens` tokens: int64 [n, tokens].

    Fewer streams are made when the text is too short for all of them; at least one stream of
    `tokens` tokens (or all the text, if shorter, down to 2 tokens) is always made.
    """
    ids = np.asarray(ids, np.int64)
    if n_streams < 1 or tokens < 2:
        raise EdgelinError(f"need at least 1 stream of 2 tokens, got {n_streams} x {tokens}")
    if ids.size < 2:
        raise EdgelinError(f"the text is {ids.size} token(s) long; need at least 2")
    tokens = min(tokens, ids.size)
    n = max(1, min(n_streams, ids.size // tokens))
    return ids[: n * tokens].reshape(n, tokens)
