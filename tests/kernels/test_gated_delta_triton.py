"""Triton chunk gated delta rule (forward, final state, every gradient) against recurrent references."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from tests.kernels._check import assert_close  # noqa: E402
from edgelin.kernels.gated_delta.triton_chunk import chunk_gated_delta_rule  # noqa: E402


def local_naive_gated_delta(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False):
    """Step-by-step float32 loop of the gated delta rule."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * err[:, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(out, 1), (S if output_final_state else None)


def references():
    refs = [("local_naive", local_naive_gated_delta)]
    try:
        from edgelin.kernels.gated_delta import reference
    except ImportError:
        return refs
    names = ("naive_recurrent_gated_delta_rule", "chunk_gated_delta_rule_ref")
    return refs + [(n, getattr(reference, n)) for n in names if hasattr(reference, n)]


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
]


def make_inputs(B, T, H, K, V, norm, use_h0, device, dtype=torch.float32, seed=42):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen)) / norm
    beta = torch.rand(B, T, H, generator=gen).sigmoid()
    h0 = torch.randn(B, H, K, V, generator=gen) if use_h0 else None
    do = torch.randn(B, T, H, V, generator=gen)
    dht = torch.randn(B, H, K, V, generator=gen)
    cast = lambda x: x.to(device, dtype).requires_grad_()  # noqa: E731
    inputs = [cast(x) for x in (q, k, v, g, beta)] + [None if h0 is None else h0.to(device).requires_grad_()]
    return inputs, do.to(device, dtype), dht.to(device)


def run(fn, inputs, do, dht):
    q, k, v, g, beta, h0 = inputs
    o, ht = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    ((o * do).sum() + (ht * dht).sum()).backward()
    grads = [x.grad for x in (q, k, v, g, beta, h0) if x is not None]
    for x in inputs:
        if x is not None:
            x.grad = None
    return [o, ht] + grads


@pytest.mark.parametrize("B,T,H,K,V,norm,use_h0", CASES,
                         ids=[f"B{c[0]}-T{c[1]}-H{c[2]}-K{c[3]}-V{c[4]}-gn{c[5]}-h0{int(c[6])}" for c in CASES])
def test_chunk_gated_delta_matches_reference(B, T, H, K, V, norm, use_h0, device):
    inputs, do, dht = make_inputs(B, T, H, K, V, norm, use_h0, device)
    out = run(chunk_gated_delta_rule, inputs, do, dht)
    names = ["o", "ht", "dq", "dk", "dv", "dg", "dbeta"] + (["dh0"] if use_h0 else [])
    for ref_name, ref_fn in references():
        ref = run(ref_fn, inputs, do, dht)
        for name, r, x in zip(names, ref, out):
            assert_close(f"{ref_name}:{name}", r, x, 1e-4)


def test_chunk_gated_delta_rejects_bad_shapes(device):
    q = torch.randn(1, 8, 2, 16, device=device)
    with pytest.raises(ValueError, match="beta must be"):
        chunk_gated_delta_rule(q, q, q, q[..., 0], q[:, :, :1, 0])


def test_chunk_gated_delta_without_states_and_custom_scale(device):
    (q, k, v, g, beta, _), do, _ = make_inputs(1, 70, 2, 16, 16, 1.0, False, device)
    outs = []
    for fn in (local_naive_gated_delta, chunk_gated_delta_rule):
        o, ht = fn(q, k, v, g, beta, scale=0.3)
        assert ht is None
        (o * do).sum().backward()
        outs.append([o] + [x.grad.clone() for x in (q, k, v, g, beta)])
        for x in (q, k, v, g, beta):
            x.grad = None
    for name, r, x in zip(["o", "dq", "dk", "dv", "dg", "dbeta"], *outs):
        assert_close(name, r, x, 1e-4)
