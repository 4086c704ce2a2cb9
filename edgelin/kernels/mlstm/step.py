"""One token of the mLSTM (xLSTM's matrix memory): the recurrence shared by the naive reference and the layer's step."""
from __future__ import annotations

from typing import Callable

import torch

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (C [B, H, K, V], n [B, H, K], m [B, H])
Handoff = Callable[[torch.Tensor], torch.Tensor]


def mlstm_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState, eps: float
) -> tuple[torch.Tensor, MLSTMState]:
    """The max-stabilised mLSTM step, as transformers' `mlstm_recurrent_step_native`.

    q, k [B, H, K] (q comes scaled), v [B, H, V]; i the input gate's log (its pre-activation) and f
    the forget gate's log (<= 0), both [B, H]. The state holds C and n scaled by exp(-m):

        m' = max(f + m, i);  C' = exp(f + m - m') C + exp(i - m') k v^T;  n' = exp(f + m - m') n + exp(i - m') k
        h  = q C' / (max(|q . n'|, exp(-m')) + eps)
    """
    C, n, m = state
    m_new = torch.maximum(f + m, i)
    decay, gate = (f + m - m_new).exp(), (i - m_new).exp()
    C = C * decay[..., None, None] + (gate[..., None] * k)[..., :, None] * v[..., None, :]
    n = n * decay[..., None] + gate[..., None] * k
    den = torch.maximum((q * n).sum(-1).abs(), (-m_new).exp()) + eps
    return torch.einsum("bhk,bhkv->bhv", q, C) / den[..., None], (C, n, m_new)


def mlstm_steps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, state: MLSTMState, eps: float,
    handoff: Handoff = lambda s: s,
) -> tuple[torch.Tensor, list[MLSTMState]]:
    """K positions of `mlstm_step`, one after another (the verify graph): q, k [B, K, H, Dk], v [B, K, H, Dv],
    i, f [B, K, H] -> h [B, K, H, Dv] and the state after each position. The step's arithmetic element
    for element (q C as a MatMul, which ONNX Runtime computes as the step's Einsum); the state each
    position passes on goes through `handoff`."""
    C, n, m = state
    qr = q[..., None, :]  # [B, K, H, 1, Dk]
    outs, states = [], []
    for t in range(q.shape[1]):
        qt, kt = q[:, t], k[:, t]
        m_new = torch.maximum(f[:, t] + m, i[:, t])
        decay, gate = (f[:, t] + m - m_new).exp(), (i[:, t] - m_new).exp()
        C = C * decay[..., None, None] + (gate[..., None] * kt)[..., :, None] * v[:, t, :, None, :]
        n = n * decay[..., None] + gate[..., None] * kt
        den = torch.maximum((qt * n).sum(-1).abs(), (-m_new).exp()) + eps
        outs.append((qr[:, t] @ C) / den[..., None, None])  # [B, H, 1, Dv]
        C, n, m = handoff(C), handoff(n), handoff(m_new)
        states.append((C, n, m))
    return torch.cat(outs, 2).transpose(1, 2), states
