"""Pure-torch mLSTM (xLSTM's matrix memory): a naive recurrence and a chunked form.

Layout `[B, T, H, K|V]`; `i` the input gates' logs (their pre-activations, exponential gating) and
`f` the forget gates' logs (<= 0), both `[B, T, H]`; the state `(C [B, H, K, V], n [B, H, K], m [B, H])`
in float32, C and n scaled by exp(-m). With b_t the cumulated f, the weight of token j at time t is
exp(b_t - b_j + i_j), and that of the initial state exp(b_t + m_0):

    m_t = max(b_t + m_0, max_{j<=t} b_t - b_j + i_j)            (the step form's running max)
    C_t = sum_j exp(b_t - b_j + i_j - m_t) k_j v_j^T + exp(b_t + m_0 - m_t) C_0,   n_t likewise with k_j
    o_t = scale q_t C_t / (max(|scale q_t . n_t|, exp(-m_t)) + eps)

A state of zeros (m_0 = 0 included) is the start of a sequence, as in transformers' xLSTM.
"""
from __future__ import annotations

import torch

from edgelin.kernels.mlstm.step import MLSTMState, mlstm_step


def _start(q: torch.Tensor, v: torch.Tensor, initial_state: MLSTMState | None) -> MLSTMState:
    """The initial state in float32; zeros (m = 0 too) when None. q, v [B, T, H, K|V]."""
    B, _, H, K = q.shape
    if initial_state is None:
        return q.new_zeros(B, H, K, v.shape[-1]), q.new_zeros(B, H, K), q.new_zeros(B, H)
    return tuple(s.float() for s in initial_state)  # type: ignore[return-value]


def naive_recurrent_mlstm(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: MLSTMState | None = None,
    output_final_state: bool = False,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, MLSTMState | None]:
    """One step per token, in float32. The ground truth for every other mLSTM form."""
    dtype = v.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, i, f = (x.float() for x in (q, k, v, i, f))
    state = _start(q, v, initial_state)
    o = []
    for t in range(q.shape[1]):
        o_t, state = mlstm_step(q[:, t] * scale, k[:, t], v[:, t], i[:, t], f[:, t], state, eps)
        o.append(o_t)
    return torch.stack(o, 1).to(dtype), (state if output_final_state else None)


def chunk_mlstm_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    f: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: MLSTMState | None = None,
    output_final_state: bool = False,
    eps: float = 1e-6,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, MLSTMState | None]:
    """Chunked parallel form (transformers' `chunkwise` form): exact, memory O(T * chunk_size).

    Within a chunk every weight is taken relative to its row's max m_t, and the state carried from
    chunk to chunk relative to the running max at the chunk's end, so no exponent is ever positive.
    A T that chunk_size does not divide ends in one shorter chunk (no padding: a padded step would
    need an input gate of -inf). Only ONNX-exportable ops; for a fixed T the chunk loop unrolls.
    """
    dtype = v.dtype
    T, K = int(q.shape[1]), q.shape[-1]  # int: a constant when traced, so the chunk masks fold
    scale = K**-0.5 if scale is None else scale
    q, k, v, i, f = (x.float() for x in (q, k, v, i, f))
    state = _start(q, v, initial_state)
    whole = T - T % chunk_size
    o = []
    for start, stop, size in ((0, whole, chunk_size), (whole, T, T - whole)):
        if stop > start:
            o_part, state = _chunks(*(x[:, start:stop] for x in (q, k, v, i, f)), state, scale, eps, size)
            o.append(o_part)
    return torch.cat(o, 1).to(dtype), (state if output_final_state else None)


def _chunks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
    state: MLSTMState, scale: float, eps: float, C: int,
) -> tuple[torch.Tensor, MLSTMState]:
    """The chunked form over T steps, a multiple of C, in float32."""
    B, T, H, _ = q.shape
    V = v.shape[-1]
    N = T // C
    q, k, v = (x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))  # [B, H, N, C, D]
    i, b = (x.reshape(B, N, C, H).permute(0, 3, 1, 2) for x in (i, f))  # [B, H, N, C]
    b = b.cumsum(-1)
    q = q * scale
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    log_d = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~causal, float("-inf"))  # [B, H, N, C, C]
    m_intra = log_d.amax(-1)
    to_end = b[..., -1:] - b + i  # log weight of each step in the chunk's last state
    to_end_max = to_end.amax(-1)
    qk = q @ k.transpose(-1, -2)
    Cs, ns, m = state
    o = []
    for c in range(N):
        m_row = torch.maximum(b[:, :, c] + m[..., None], m_intra[:, :, c])  # [B, H, C]
        s = qk[:, :, c] * (log_d[:, :, c] - m_row[..., None]).exp()
        from_state = (b[:, :, c] + m[..., None] - m_row).exp()
        num = from_state[..., None] * (q[:, :, c] @ Cs) + s @ v[:, :, c]
        qn = from_state * (q[:, :, c] @ ns[..., None])[..., 0] + s.sum(-1)
        o.append(num / (torch.maximum(qn.abs(), (-m_row).exp()) + eps)[..., None])
        m_next = torch.maximum(b[:, :, c, -1] + m, to_end_max[:, :, c])
        decay = (b[:, :, c, -1] + m - m_next).exp()
        kw = k[:, :, c] * (to_end[:, :, c] - m_next[..., None]).exp()[..., None]
        Cs = Cs * decay[..., None, None] + kw.transpose(-1, -2) @ v[:, :, c]
        ns = ns * decay[..., None] + kw.sum(-2)
        m = m_next
    return torch.stack(o, 2).permute(0, 2, 3, 1, 4).reshape(B, T, H, V), (Cs, ns, m)
