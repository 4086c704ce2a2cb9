"""Small pieces shared by the Triton chunk kernels: chunk-local cumsum of log gates, block sizes."""

import os

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
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


INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# EDGELIN_NO_AUTOTUNE=1 takes each kernel's first config (tests: fewer compiles)
NO_AUTOTUNE = INTERPRET or os.environ.get("EDGELIN_NO_AUTOTUNE") == "1"


def _quick_bench(fn, quantiles=None):
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def autotune(configs, key):
    """triton.autotune with a short timing per config; only the first config when not tuning."""
    return triton.autotune(configs=configs[:1] if NO_AUTOTUNE else configs, key=key, do_bench=_quick_bench)


def warps_stages(warps=(4, 8), stages=(2,), **kwargs):
    return [triton.Config(dict(kwargs), num_warps=w, num_stages=s) for w in warps for s in stages]
