"""Pure-torch gated linear attention with per-channel decay: a naive recurrence and a chunked form.

Layout `[B, T, H, K|V]`, log-decay `g` `[B, T, H, K]` (<= 0), state `[B, H, K, V]` in float32.
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t
"""
from __future__ import annotations

import torch

from edgelin.kernels.gla.step import gla_step


def naive_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step per token, in float32. The ground truth for every other GLA form."""
    dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.float() for x in (q, k, v, g))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o = []
    for t in range(T):
        o_t, S = gla_step(q[:, t] * scale, k[:, t], v[:, t], g[:, t], S)
        o.append(o_t)
    return torch.stack(o, 1).to(dtype), (S if output_final_state else None)


def chunk_gla_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked parallel form: exact, memory O(T * chunk_size * K), no exp of a positive number.

    Within a chunk the decay between positions i >= j is exp(gc_i - gc_j) per channel, formed
    as a [C, C, K] tensor so that strong decays never overflow (q*exp(gc), k*exp(-gc) would).
    """
    dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    pad = (-T) % C
    q, k, v, g = (x.float() for x in (q, k, v, g))
    if pad:
        # Padded steps have zero key/value and no decay, so they change neither output nor state.
        q, k, v, g = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
    N = (T + pad) // C
    # [B, H, N, C, D]
    q, k, v, g = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v, g))
    q = q * scale
    gc = g.cumsum(-2)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (gc[..., :, None, :] - gc[..., None, :, :]).masked_fill(~causal[..., None], float("-inf"))
    # [B, H, N, C, C]
    attn = torch.einsum("bhnik,bhnjk,bhnijk->bhnij", q, k, diff.exp())
    o_intra = attn @ v
    q_decayed = q * gc.exp()
    k_to_end = k * (gc[..., -1:, :] - gc).exp()
    decay_end = gc[..., -1, :].exp()  # [B, H, N, K]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o_inter = []
    for n in range(N):
        o_inter.append(q_decayed[:, :, n] @ S)
        S = S * decay_end[:, :, n, :, None] + k_to_end[:, :, n].transpose(-1, -2) @ v[:, :, n]
    o = o_intra + torch.stack(o_inter, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(dtype), (S if output_final_state else None)
