"""Input checks shared by the public chunk functions: one ValueError naming the bad value."""
from __future__ import annotations

import torch

from edgelin.kernels.common.chunk_utils import INTERPRET


def check_qkv_state(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: torch.Tensor | None) -> None:
    """q, k [B, T, H, K] and v [B, T, H, V] in one of bf16/fp16/fp32 on CUDA; initial_state fp32 [B, H, K, V]."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must be [B, T, H, K] with one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"v must be [B, T, H, V] = [{B}, {T}, {H}, V], got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q, k, v must share one of bf16/fp16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.is_cuda or INTERPRET):
        raise ValueError(f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got device {q.device}")
    if K > 256 or v.shape[-1] > 256:
        raise ValueError(f"head dims up to 256 are supported, got K={K}, V={v.shape[-1]}")
    if initial_state is not None and (initial_state.shape != (B, H, K, v.shape[-1]) or initial_state.dtype != torch.float32):
        raise ValueError(
            f"initial_state must be float32 [B, H, K, V] = {(B, H, K, v.shape[-1])}, "
            f"got {initial_state.dtype} {tuple(initial_state.shape)}"
        )
