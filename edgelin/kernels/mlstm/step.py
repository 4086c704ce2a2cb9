"""One token of the mLSTM (xLSTM's matrix memory): the recurrence shared by the naive reference and the layer's step."""
from __future__ import annotations

import torch

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (C [B, H, K, V], n [B, H, K], m [B, H])


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
