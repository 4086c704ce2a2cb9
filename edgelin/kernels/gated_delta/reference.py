"""Pure-torch gated delta rule (Gated DeltaNet): a naive recurrence and a chunked (WY) form.

Layout `[B, T, H, K|V]`, log-decay `g` `[B, T, H]` (<= 0), `beta` `[B, T, H]` in (0, 1),
state `[B, H, K, V]` in float32; q and k are L2-normalised by the caller.
    S_t = exp(g_t) S_{t-1};  S_t += beta_t k_t^T (v_t - k_t S_t);  o_t = scale * q_t S_t
"""
from __future__ import annotations

import math

import torch

from edgelin.kernels.gated_delta.step import gated_delta_rule_step


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step per token, in float32. The ground truth for every other gated-delta form."""
    dtype = v.dtype
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.float()
    o = []
    for t in range(T):
        o_t, S = gated_delta_rule_step(q[:, t] * scale, k[:, t], v[:, t], g[:, t], beta[:, t], S)
        o.append(o_t)
    return torch.stack(o, 1).to(dtype), (S if output_final_state else None)


def unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + A)^-1 for strictly lower-triangular A [..., C, C], without a solve or a loop over C.

    N = -A is nilpotent, so (I - N)^-1 = sum_{k<C} N^k = (I + N)(I + N^2)(I + N^4)...: log2(C)
    matrix products, which export to any back end (ONNX has no triangular solve).
    """
    C = a.shape[-1]
    eye = torch.eye(C, dtype=a.dtype, device=a.device)
    power = -a
    inverse = eye + power
    for _ in range(max(0, math.ceil(math.log2(C)) - 1)):
        power = power @ power
        inverse = inverse @ (eye + power)
    return inverse


def chunk_gated_delta_rule_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked form: within a chunk, u = (I + A)^-1 (beta v - beta Gamma k S0) (the WY/UT trick),
    A_ij = beta_i (Gamma_i / Gamma_j) k_i.k_j for j < i; then o and S follow as in linear attention.
    Memory O(T * chunk_size)."""
    dtype = v.dtype
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    pad = (-T) % C
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if pad:
        # Padded steps: zero key, zero beta, no decay; they leave the state untouched.
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (g, beta))
    N = (T + pad) // C
    q, k, v = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))  # [B, H, N, C, D]
    gc, beta = (x.reshape(B, N, C, H).permute(0, 3, 1, 2) for x in (g, beta))  # [B, H, N, C]
    gc = gc.cumsum(-1)
    q = q * scale
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (gc[..., :, None] - gc[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    kk = k @ k.transpose(-1, -2)
    a = (beta[..., None] * kk * decay).tril(-1)
    w = unit_lower_inverse(a)
    u_from_v = w @ (beta[..., None] * v)
    u_from_state = w @ (beta[..., None] * gc.exp()[..., None] * k)  # times S0 gives the correction
    attn = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * gc.exp()[..., None]
    k_to_end = k * (gc[..., -1:] - gc).exp()[..., None]
    decay_end = gc[..., -1].exp()
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    o = []
    for n in range(N):
        u = u_from_v[:, :, n] - u_from_state[:, :, n] @ S
        o.append(q_decayed[:, :, n] @ S + attn[:, :, n] @ u)
        S = S * decay_end[:, :, n, None, None] + k_to_end[:, :, n].transpose(-1, -2) @ u
    o = torch.stack(o, 2).permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(dtype), (S if output_final_state else None)
