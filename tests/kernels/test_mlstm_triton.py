"""Triton chunk mLSTM (forward, final (C, n, m), every gradient) against the torch references."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tests.kernels._check import assert_close  # noqa: E402
from edgelin.kernels.mlstm.reference import chunk_mlstm_ref, naive_recurrent_mlstm  # noqa: E402
from edgelin.kernels.mlstm.triton_chunk import chunk_mlstm  # noqa: E402

CASES = [
    # B, T, H, K, V, input gates (mean, spread), forget gate normaliser, use_h0, chunk
    (1, 40, 2, 16, 16, (0.0, 1.0), 1.0, True, 16),
    (2, 33, 1, 16, 32, (0.0, 5.0), 0.1, True, 16),
    (1, 50, 1, 32, 16, (0.0, 0.1), 10.0, False, 16),
    (1, 70, 1, 20, 24, (0.0, 1.0), 1.0, True, 64),
    # input gates near 12: m near 12 and exp(-m) near eps
    (1, 40, 2, 16, 16, (12.0, 1.0), 1.0, True, 16),
]
NAMES = ["o", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"]


def make_inputs(B, T, H, K, V, gates, norm, use_h0, device, seed=42):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    i = torch.randn(B, T, H, generator=gen) * gates[1] + gates[0]
    f = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2) / norm
    state0 = (torch.randn(B, H, K, V, generator=gen), torch.randn(B, H, K, generator=gen), torch.randn(B, H, generator=gen))
    upstream = [torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen),
                torch.randn(B, H, K, generator=gen), torch.randn(B, H, generator=gen)]
    leaves = [x.to(device).requires_grad_() for x in (q, k, v, i, f)]
    state0 = [x.to(device).requires_grad_() for x in state0] if use_h0 else None
    return leaves, state0, [u.to(device) for u in upstream]


def run(fn, leaves, state0, upstream, **kw):
    o, final = fn(*leaves, initial_state=None if state0 is None else tuple(state0), output_final_state=True, **kw)
    sum((x * u).sum() for x, u in zip((o, *final), upstream)).backward()
    tensors = leaves + (state0 or [])
    grads = [x.grad for x in tensors]
    for x in tensors:
        x.grad = None
    return [o, *final, *grads]


@pytest.mark.parametrize("B,T,H,K,V,gates,norm,use_h0,chunk", CASES, ids=[
    f"B{c[0]}-T{c[1]}-H{c[2]}-K{c[3]}-V{c[4]}-i{c[5][0]}+-{c[5][1]}-fn{c[6]}-h0{int(c[7])}-c{c[8]}" for c in CASES])
def test_chunk_mlstm_matches_references(B, T, H, K, V, gates, norm, use_h0, chunk, device):
    leaves, state0, upstream = make_inputs(B, T, H, K, V, gates, norm, use_h0, device)
    out = run(chunk_mlstm, leaves, state0, upstream, chunk_size=chunk)
    names = NAMES if use_h0 else NAMES[:9]
    for ref_name, ref_fn in (("naive", naive_recurrent_mlstm), ("chunk_ref", chunk_mlstm_ref)):
        ref = run(ref_fn, leaves, state0, upstream)
        for name, r, x in zip(names, ref, out):
            assert_close(f"{ref_name}:{name}", r, x, 1e-4)


def test_chunk_mlstm_output_only_and_custom_scale(device):
    """No final state asked (o's gradient alone), a scale other than K ** -0.5, and an eps large enough
    that the gradient through the stabiliser m (-eps (o . do) / den per step) shows in di and df."""
    leaves, _, upstream = make_inputs(1, 37, 2, 16, 16, (0.0, 1.0), 1.0, False, device)
    outs = []
    for fn, kw in ((naive_recurrent_mlstm, {}), (chunk_mlstm, {"chunk_size": 16})):
        o, final = fn(*leaves, scale=0.3, eps=1e-3, **kw)
        assert final is None
        (o * upstream[0]).sum().backward()
        outs.append([o] + [x.grad.clone() for x in leaves])
        for x in leaves:
            x.grad = None
    for name, r, x in zip(["o", "dq", "dk", "dv", "di", "df"], *outs):
        assert_close(name, r, x, 1e-4)


def test_chunk_mlstm_rejects_bad_shapes(device):
    q = torch.randn(1, 8, 2, 16, device=device)
    with pytest.raises(ValueError, match="i and f must be"):
        chunk_mlstm(q, q, q, q[..., 0], q[:, :, :1, 0])
    with pytest.raises(ValueError, match="initial n and m"):
        chunk_mlstm(q, q, q, q[..., 0], q[..., 0], initial_state=(torch.zeros(1, 2, 16, 16, device=device),
                                                                 torch.zeros(1, 2, 16, device=device), torch.zeros(1, 2, 1, device=device)))
