"""The chunked torch forms in edgelin/kernels/<op>/reference.py against their naive recurrences,
and each layer's step against the naive recurrence of its op."""
import sys

import pytest
import torch
import torch.nn.functional as F

from edgelin.kernels.gated_delta.reference import chunk_gated_delta_rule_ref, naive_recurrent_gated_delta_rule
from edgelin.kernels.gla.reference import chunk_gla_ref, naive_recurrent_gla
from edgelin.kernels.mlstm.reference import chunk_mlstm_ref, naive_recurrent_mlstm
from edgelin.kernels.simple_gla.reference import chunk_simple_gla_ref, naive_recurrent_simple_gla
from edgelin.models.config import LMConfig
from edgelin.models.layers import MIXERS


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    """rms(ref - out) / rms(ref), with an absolute floor of 1e-6 on the error (as fla's assert_close)."""
    err = (ref - out).pow(2).mean().sqrt().item()
    return 0.0 if err < 1e-6 else err / max(ref.pow(2).mean().sqrt().item(), 1e-12)


def inputs(B, T, H, K, V, normalizer, per_channel):
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v = torch.randn(B, T, H, V)
    shape = (B, T, H, K) if per_channel else (B, T, H)
    g = F.logsigmoid(torch.randn(shape)) / normalizer
    h0 = torch.randn(B, H, K, V)
    return [t.requires_grad_() for t in (q, k, v, g, h0)]


def compare(naive, chunk, args, kwargs_extra=None):
    *tensors, h0 = args
    kwargs = dict(initial_state=h0, output_final_state=True)
    o1, s1 = naive(*tensors, **kwargs)
    o2, s2 = chunk(*tensors, **kwargs)
    do, ds = torch.randn_like(o1), torch.randn_like(s1)
    g1 = torch.autograd.grad((o1 * do).sum() + (s1 * ds).sum(), args)
    g2 = torch.autograd.grad((o2 * do).sum() + (s2 * ds).sum(), args)
    assert rms_ratio(o1, o2) < 1e-5, ("o", rms_ratio(o1, o2))
    assert rms_ratio(s1, s2) < 1e-5, ("state", rms_ratio(s1, s2))
    for name, a, b in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"][: len(g1)], g1, g2):
        assert rms_ratio(a, b) < 1e-4, (name, rms_ratio(a, b))


SHAPES = [(1, 63, 2, 32, 32), (2, 100, 1, 60, 100), (1, 1, 2, 16, 16)]
IDS = ["B1-T63-H2-D32", "B2-T100-H1-K60-V100", "B1-T1-H2-D16"]


@pytest.mark.parametrize("normalizer", [0.1, 1, 10], ids=lambda n: f"norm{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_chunk_gla(shape, normalizer):
    compare(naive_recurrent_gla, chunk_gla_ref, inputs(*shape, normalizer, per_channel=True))


@pytest.mark.parametrize("normalizer", [0.1, 1, 10], ids=lambda n: f"norm{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_chunk_simple_gla(shape, normalizer):
    compare(naive_recurrent_simple_gla, chunk_simple_gla_ref, inputs(*shape, normalizer, per_channel=False))


@pytest.mark.parametrize("normalizer", [0.1, 1, 10], ids=lambda n: f"norm{n}")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_chunk_gated_delta_rule(shape, normalizer):
    q, k, v, g, h0 = inputs(*shape, normalizer, per_channel=False)
    beta = torch.rand(g.shape).requires_grad_()

    def normalised(fn):
        return lambda q, k, v, g, beta, **kw: fn(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, g, beta, **kw)

    compare(normalised(naive_recurrent_gated_delta_rule), normalised(chunk_gated_delta_rule_ref), [q, k, v, g, beta, h0])


@pytest.mark.parametrize("gates", [(1.0, 1.0), (5.0, 0.1), (0.1, 10.0)], ids=lambda g: f"i{g[0]}-fnorm{g[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_chunk_mlstm(shape, gates):
    """Outputs, the three states and the gradients of q, k, v, both gates and the initial (C, n, m);
    `gates`: the input gates' spread and the forget gates' normaliser (strong and weak decay)."""
    B, T, H, K, V = shape
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    i = torch.randn(B, T, H) * gates[0]
    f = F.logsigmoid(torch.randn(B, T, H) + 2) / gates[1]
    state0 = (torch.randn(B, H, K, V), torch.randn(B, H, K), torch.randn(B, H))
    args = [t.requires_grad_() for t in (q, k, v, i, f, *state0)]
    outs = []
    for fn in (naive_recurrent_mlstm, chunk_mlstm_ref):
        o, state = fn(*args[:5], initial_state=tuple(args[5:]), output_final_state=True)
        outs.append((o, *state))
    upstream = [torch.randn_like(x) for x in outs[0]]
    grads = [torch.autograd.grad(sum((x * u).sum() for x, u in zip(out, upstream)), args) for out in outs]
    for name, a, b in zip(["o", "C", "n", "m"], *outs):
        assert rms_ratio(a, b) < 1e-5, (name, rms_ratio(a, b))
    for name, a, b in zip(["dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"], *grads):
        assert rms_ratio(a, b) < 1e-4, (name, rms_ratio(a, b))


NAIVE = {
    "chunk_gla": naive_recurrent_gla,
    "chunk_simple_gla": naive_recurrent_simple_gla,
    "chunk_gated_delta_rule": naive_recurrent_gated_delta_rule,
    "chunk_mlstm": naive_recurrent_mlstm,
}
LAYERS = {
    "gla": {"use_short_conv": True},
    "gated_delta": {},
    "delta_net": {},
    "retention": {},
    "retention-rotary": {"rotary": True},
    "mamba2": {"head_dim": 16, "state_size": 16},
    "mamba": {"state_size": 8},
    "mlstm": {},
    "mlstm-uncapped": {"gate_soft_cap": None, "expand_k": 1.0},
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_step_equals_naive_recurrence(name, monkeypatch):
    """T calls of the layer's step equal its forward with the op's naive recurrence in place of the chunked form."""
    family = name.split("-")[0]
    layer = MIXERS[family](LMConfig(d_model=64, n_heads=2, pattern=[family], mixers={family: LAYERS[name]}), 0).eval()
    module = sys.modules[type(layer).__module__]
    chunks = [chunk for chunk in NAIVE if hasattr(module, chunk)]
    assert chunks, f"{module.__name__} calls none of {list(NAIVE)}"
    for chunk in chunks:
        monkeypatch.setattr(module, chunk, NAIVE[chunk])
    state0 = {kind: torch.randn_like(s) for kind, s in layer.init_state(2).items()}
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        y_ref, state_ref = layer(x, state0)
        state, ys = state0, []
        for t in range(x.shape[1]):
            y, state = layer.step(x[:, t : t + 1], state)
            ys.append(y)
    assert rms_ratio(y_ref, torch.cat(ys, 1)) < 1e-5
    for kind in state_ref:
        assert rms_ratio(state_ref[kind], state[kind]) < 1e-5, kind
