"""Triton chunk GLA (forward, final state, every gradient) against recurrent references."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tests.kernels._check import assert_close  # noqa: E402
from edgelin.kernels.gla.triton_chunk import chunk_gla  # noqa: E402


def local_naive_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False):
    """Step-by-step float32 loop: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g = (x.float() for x in (q, k, v, g))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1), (S if output_final_state else None)


def references():
    refs = [("local_naive", local_naive_gla)]
    try:
        from edgelin.kernels.gla import reference
    except ImportError:
        return refs
    refs += [(n, getattr(reference, n)) for n in ("naive_recurrent_gla", "chunk_gla_ref") if hasattr(reference, n)]
    return refs


CASES = [
    # B, T, H, K, V, gate_logit_normalizer, use_h0
    (1, 63, 2, 16, 16, 1.0, False),
    (2, 63, 2, 32, 16, 0.1, True),
    (2, 33, 2, 16, 32, 10.0, True),
    (1, 64, 1, 32, 32, 1.0, True),
    (1, 150, 2, 16, 16, 1.0, True),
    (2, 130, 1, 32, 32, 0.1, False),
    (1, 129, 1, 32, 16, 10.0, True),
    (1, 70, 1, 20, 24, 1.0, True),
    (1, 40, 1, 80, 16, 1.0, True),  # two K blocks in the backward intra kernel, the second partial
]


def make_inputs(B, T, H, K, V, norm, use_h0, device, dtype=torch.float32, seed=42):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / norm
    h0 = torch.randn(B, H, K, V, generator=gen) if use_h0 else None
    do = torch.randn(B, T, H, V, generator=gen)
    dht = torch.randn(B, H, K, V, generator=gen)
    cast = lambda x: None if x is None else x.to(device, dtype).requires_grad_()  # noqa: E731
    return [cast(x) for x in (q, k, v, g)] + [None if h0 is None else h0.to(device).requires_grad_()], \
        do.to(device, dtype), dht.to(device)


def run(fn, inputs, do, dht):
    q, k, v, g, h0 = inputs
    o, ht = fn(q, k, v, g, initial_state=h0, output_final_state=True)
    ((o * do).sum() + (ht * dht).sum()).backward()
    grads = [x.grad for x in (q, k, v, g, h0) if x is not None]
    for x in inputs:
        if x is not None:
            x.grad = None
    return [o, ht] + grads


def check_against_references(inputs, do, dht, use_h0):
    out = run(chunk_gla, inputs, do, dht)
    names = ["o", "ht", "dq", "dk", "dv", "dg"] + (["dh0"] if use_h0 else [])
    for ref_name, ref_fn in references():
        ref = run(ref_fn, inputs, do, dht)
        for name, r, x in zip(names, ref, out):
            assert_close(f"{ref_name}:{name}", r, x, 1e-4)


@pytest.mark.parametrize("B,T,H,K,V,norm,use_h0", CASES,
                         ids=[f"B{c[0]}-T{c[1]}-H{c[2]}-K{c[3]}-V{c[4]}-gn{c[5]}-h0{int(c[6])}" for c in CASES])
def test_chunk_gla_matches_reference(B, T, H, K, V, norm, use_h0, device):
    check_against_references(*make_inputs(B, T, H, K, V, norm, use_h0, device), use_h0)


def test_chunk_gla_strong_decay(device):
    # half the channels decay by about exp(-5) a step (exp(-80) across a 16-row sub-chunk), half barely;
    # T = 100 ends in a partial chunk and a partial sub-chunk
    inputs, do, dht = make_inputs(2, 100, 2, 32, 16, 1.0, True, device)
    g = inputs[3].detach()
    g[..., :16] = -5 + g[..., :16] / 4
    g[..., 16:] = g[..., 16:] / 50
    check_against_references(inputs, do, dht, True)


def test_chunk_gla_rejects_bad_shapes(device):
    q = torch.randn(1, 8, 2, 16, device=device)
    with pytest.raises(ValueError, match="g must be"):
        chunk_gla(q, q, q, q[..., :8])


def test_chunk_gla_without_states_and_custom_scale(device):
    (q, k, v, g, _), do, _ = make_inputs(1, 70, 2, 16, 16, 1.0, False, device)
    outs = []
    for fn in (local_naive_gla, chunk_gla):
        o, ht = fn(q, k, v, g, scale=0.3)
        assert ht is None
        (o * do).sum().backward()
        outs.append([o] + [x.grad.clone() for x in (q, k, v, g)])
        for x in (q, k, v, g):
            x.grad = None
    for name, r, x in zip(["o", "dq", "dk", "dv", "dg"], *outs):
        assert_close(name, r, x, 1e-4)
