"""Small pieces shared by the Triton chunk kernels: chunk-local cumsum of log gates, block sizes."""

import torch
import triton
import triton.language as tl


@triton.jit
def chunk_local_cumsum_kernel(
    g, gc, T,
    H: tl.constexpr, S: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
):
    i_s, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)
    o_s = i_s * BS + tl.arange(0, BS)
    m = (o_t < T)[:, None] & (o_s < S)[None, :]
    off = (i_b * T + o_t[:, None]).to(tl.int64) * (H * S) + i_h * S + o_s[None, :]
    # [BT, BS]
    b_g = tl.load(g + off, mask=m, other=0).to(tl.float32)
    tl.store(gc + off, tl.cumsum(b_g, axis=0), mask=m)


def next_block(n: int, cap: int) -> int:
    """Power-of-two block covering `n` (at least 16, the smallest tl.dot side), at most `cap`."""
    return min(cap, max(16, triton.next_power_of_2(n)))


def chunk_local_cumsum(g: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Inclusive cumsum of `g` ([B, T, H] or [B, T, H, S]) restarting every `chunk_size` steps, in float32."""
    B, T, H = g.shape[:3]
    S = g.shape[3] if g.dim() == 4 else 1
    gc = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    BS = min(64, triton.next_power_of_2(S))
    grid = (triton.cdiv(S, BS), triton.cdiv(T, chunk_size), B * H)
    chunk_local_cumsum_kernel[grid](g, gc, T, H=H, S=S, BT=chunk_size, BS=BS)
    return gc
