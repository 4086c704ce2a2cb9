"""Pure-torch linear attention with a scalar decay per head (Mamba2's SSD, retention).

Layout `[B, T, H, K|V]`, log-decay `g` `[B, T, H]` (<= 0), state `[B, H, K, V]` in float32.
    S_t = exp(g_t) S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t
"""
from __future__ import annotations

import torch

from edgelin.kernels.simple_gla.step import simple_gla_step


def naive_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step per token, in float32."""
    dtype = v.dtype
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.float() for x in (q, k, v, g))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float()
    o = []
    for t in range(T):
        o_t, S = simple_gla_step(q[:, t] * scale, k[:, t], v[:, t], g[:, t], S)
        o.append(o_t)
    return torch.stack(o, 1).to(dtype), (S if output_final_state else None)


def chunk_simple_gla_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked parallel form: exact, memory O(T * chunk_size)."""
    dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    pad = (-T) % C
    q, k, v, g = (x.float() for x in (q, k, v, g))
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g = torch.nn.functional.pad(g, (0, 0, 0, pad))
    N = (T + pad) // C
    q, k, v = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))  # [B, H, N, C, D]
    gc = g.reshape(B, N, C, H).permute(0, 3, 1, 2).cumsum(-1)  # [B, H, N, C]
    q = q * scale
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    o_intra = ((q @ k.transpose(-1, -2)) * decay) @ v
    q_decayed = q * gc.exp()[..., None]
    k_to_end = k * (gc[..., -1:] - gc).exp()[..., None]
    decay_end = gc[..., -1].exp()  # [B, H, N]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o_inter = []
    for n in range(N):
        o_inter.append(q_decayed[:, :, n] @ S)
        S = S * decay_end[:, :, n, None, None] + k_to_end[:, :, n].transpose(-1, -2) @ v[:, :, n]
    o = o_intra + torch.stack(o_inter, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(dtype), (S if output_final_state else None)
