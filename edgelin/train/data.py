"""Byte-level text data: the first 90% of a file trains, the last 10% is held out.

Batches are random windows drawn from a generator seeded by (seed, rank, step), so the batch at a
given step is the same whether or not the run was interrupted and resumed in between.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from edgelin.errors import EdgelinError

TRAIN_FRACTION = 0.9


@dataclass
class ByteData:
    """Train and validation bytes of one text file, as uint8 tensors."""

    train: torch.Tensor  # [N_train] uint8 bytes (or int32 token ids)
    val: torch.Tensor  # [N_val]
    source: str

    @classmethod
    def from_file(cls, path: str | Path, seq_len: int, encode: Callable[[str], list[int]] | None = None) -> "ByteData":
        """Read `path` as bytes and split it 90/10 (nanoGPT's shakespeare_char split, in bytes).
        With `encode` (a tokenizer's), the text is decoded as UTF-8 and split as token ids instead."""
        path = Path(path)
        if not path.is_file():
            raise EdgelinError(f"no such text file: {path}")
        if encode is None:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        else:
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise EdgelinError(f"{path} is not UTF-8 text (byte {e.start}); a tokenizer reads text") from None
            data = torch.tensor(encode(text), dtype=torch.int32)
        split = int(len(data) * TRAIN_FRACTION)
        train, val = data[:split], data[split:]
        if len(val) < seq_len + 1:
            raise EdgelinError(
                f"{path} is too short: {len(data)} bytes leave {len(val)} held-out bytes, "
                f"fewer than --seq-len {seq_len} + 1"
            )
        return cls(train=train, val=val, source=str(path))

    def batch(self, batch_size: int, seq_len: int, *, seed: int, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training windows for one step: inputs and next-byte targets, each [B, T] int64."""
        gen = torch.Generator().manual_seed(window_seed(seed, step, rank))
        starts = torch.randint(0, len(self.train) - seq_len - 1 + 1, (batch_size,), generator=gen)
        return windows(self.train, starts, seq_len)

    def val_windows(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every non-overlapping window of the held-out bytes (the last partial one dropped)."""
        n = (len(self.val) - 1) // seq_len
        return windows(self.val, torch.arange(n) * seq_len, seq_len)


def window_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)[None]
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
