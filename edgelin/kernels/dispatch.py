"""Which implementation a model calls: Triton chunk kernels on CUDA, the torch chunked form elsewhere."""
from __future__ import annotations

import torch

from edgelin.kernels.gated_delta.reference import chunk_gated_delta_rule_ref
from edgelin.kernels.gla.reference import chunk_gla_ref
from edgelin.kernels.mlstm.reference import chunk_mlstm_ref
from edgelin.kernels.simple_gla.reference import chunk_simple_gla_ref


def _use_triton(x: torch.Tensor) -> bool:
    return x.is_cuda and not torch.onnx.is_in_onnx_export()


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """GLA with per-channel log-decay `g` [B, T, H, K]; see kernels/gla/reference.py."""
    if _use_triton(q):
        from edgelin.kernels.gla.triton_chunk import chunk_gla as triton_chunk_gla

        return triton_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    return chunk_gla_ref(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def chunk_simple_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """Linear attention with a per-head scalar log-decay `g` [B, T, H] (Mamba2 SSD, retention)."""
    if _use_triton(q):
        from edgelin.kernels.gla.triton_chunk import chunk_gla as triton_chunk_gla

        g = g[..., None].expand(*g.shape, q.shape[-1])
        return triton_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    return chunk_simple_gla_ref(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)


def chunk_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False):
    """Gated delta rule with per-head log-decay `g` and `beta` [B, T, H]; see kernels/gated_delta/reference.py."""
    if _use_triton(q):
        from edgelin.kernels.gated_delta.triton_chunk import chunk_gated_delta_rule as triton_chunk_gdr

        return triton_chunk_gdr(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    return chunk_gated_delta_rule_ref(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state
    )


def chunk_mlstm(q, k, v, i, f, *, scale=None, initial_state=None, output_final_state=False, eps=1e-6):
    """mLSTM with the gates' logs `i`, `f` [B, T, H] and the state (C, n, m); see kernels/mlstm/reference.py."""
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state, eps=eps)
    if _use_triton(q):
        from edgelin.kernels.mlstm.triton_chunk import chunk_mlstm as triton_chunk_mlstm

        return triton_chunk_mlstm(q, k, v, i, f, **kwargs)
    return chunk_mlstm_ref(q, k, v, i, f, **kwargs)
