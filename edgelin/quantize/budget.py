"""How much text the pipeline streams: each stage's default stream layout, cut for large models.

Streaming T tokens through a package of P parameters costs about 2·P·T multiply-adds whatever the
architecture, so a stage's budget is in parameter-tokens. Up to its budget a stage keeps its default
layout (calibration 4 x 2048 tokens, validation 8 x 8192), which covers every model up to ~30M
parameters. Above it, streams are dropped first (down to one), then that stream is shortened to whole
SEGMENTs, never below the stage's floor. A stream count or length given explicitly is used as given,
and only the other one is cut. Calibration's token-by-token decode runs (one chunk in `decode_every`) cost the
whole model per step whatever the batch, so they have their own budget in parameter-steps: past it
fewer chunks go through the decode graph (the first one always does). The layouts and the rules
that chose them go into the validation report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelin.calibration.streams import MIN_STREAM_TOKENS
from edgelin.runtime.package import read_package


@dataclass(frozen=True)
class Stage:
    """A stage's default layout, its budget in parameter-tokens and the shortest stream a cut leaves."""

    name: str
    streams: int
    tokens: int  # per stream
    budget: float  # parameter-tokens
    floor: int  # tokens per stream


SEGMENT = 512  # a shortened stream keeps a multiple of this many tokens (whole prefill chunks)
CALIBRATION = Stage("calibration", 4, MIN_STREAM_TOKENS, 1e12, MIN_STREAM_TOKENS)
VALIDATION = Stage("validation", 8, 8192, 2.5e12, 1024)
DECODE_EVERY = 4  # calibration's default: every 4th chunk through the decode graph
DECODE_STEPS = 1.5e10  # parameter-steps of calibration's decode runs: 512 steps up to ~30M parameters


@dataclass(frozen=True)
class Layout:
    """How many streams of how many tokens a stage runs, and why (a sentence for the report)."""

    streams: int
    tokens: int
    rule: str

    def to_dict(self) -> dict[str, int | str]:
        return {"streams": self.streams, "tokens": self.tokens, "rule": self.rule}


def parameter_count(package_dir: str | Path) -> int:
    """Elements of the package's weights file, each distinct tensor once (docs/FORMAT.md): the
    parameters, plus any weight the graphs store in a second form (a tied LM head, transposed)."""
    index = read_package(package_dir).raw.get("weights") or {}
    return int(sum(np.prod(t["shape"], dtype=np.int64) for t in index.get("tensors", [])))


def stream_layout(stage: Stage, parameters: int, streams: int | None = None, tokens: int | None = None) -> Layout:
    """The layout `stage` runs on a model of `parameters` parameters; `streams` / `tokens` fix that count.

    Example:
        >>> stream_layout(VALIDATION, 10_000_000).streams, stream_layout(VALIDATION, 1_200_000_000).streams
        (8, 1)
    """
    if streams is not None and tokens is not None:
        return Layout(streams, tokens, f"{stage.name} {streams} x {tokens} tokens as given")
    s0 = stage.streams if streams is None else streams
    t0 = stage.tokens if tokens is None else tokens
    afford = int(stage.budget // max(parameters, 1))  # tokens the budget buys
    if s0 * t0 <= afford:
        return Layout(s0, t0, f"{stage.name} default {s0} x {t0} tokens ({parameters / 1e6:.1f}M parameters, within "
                              f"its {stage.budget:.2g} parameter-token budget)")
    s = s0 if streams is not None else max(1, min(s0, afford // t0))
    t = t0 if tokens is not None else max(stage.floor, min(t0, afford // s // SEGMENT * SEGMENT))
    return Layout(s, t, f"{stage.name} cut from {s0} x {t0} to {s} x {t} tokens: its {stage.budget:.2g} parameter-token "
                        f"budget over {parameters / 1e6:.1f}M parameters (streams first, then length, at least "
                        f"{stage.floor}); give the counts to override")


def decode_every(parameters: int, tokens: int, chunk: int) -> int:
    """Every how many chunks of a calibration stream go through the decode graph: DECODE_EVERY, or
    rarer so that its steps (a chunk's tokens each) stay within DECODE_STEPS parameter-steps."""
    chunks = max(1, tokens // chunk)
    allowed = max(1, int(DECODE_STEPS // (max(parameters, 1) * chunk)))  # chunks through decode
    return max(DECODE_EVERY, -(-chunks // allowed))
