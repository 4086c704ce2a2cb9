import numpy as np
import pytest
import torch

from edgelin.errors import EdgelinError
from edgelin.quantize.primitives import (
    ActQuant, WeightQuant, activation_qparams, dequantize_weight, fake_quantize_activation, fake_quantize_weight,
    quantize_activation_np, quantize_weight, quantize_weight_np,
)

SPECS = [WeightQuant(8), WeightQuant(4, 32), WeightQuant(4, 64), WeightQuant(4, 128)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"w{s.bits}g{s.group_size}")
def test_weight_roundtrip_error_bounded_and_np_matches(spec):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(0))
    q, scale, zero = quantize_weight(w, spec)
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    err = (dequantize_weight(q, scale, zero, spec) - w).abs()
    # error at most half a step of the block's scale
    step = scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    assert bool((err <= step / 2 + 1e-6).all())
    qn, sn, zn = quantize_weight_np(w.numpy(), spec)
    assert np.array_equal(qn, q.numpy()) and np.array_equal(sn, scale.numpy()) and np.array_equal(zn, zero.numpy())


def test_fake_quant_straight_through_and_exact_zero_row():
    w = torch.randn(4, 64)
    w[1] = 0
    w.requires_grad_()
    out = fake_quantize_weight(w, WeightQuant(4, 32))
    assert torch.equal(out[1], torch.zeros(64))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_bad_specs():
    with pytest.raises(EdgelinError, match="group_size"):
        WeightQuant(4, 48)
    with pytest.raises(EdgelinError, match="per output channel"):
        WeightQuant(8, 32)
    with pytest.raises(EdgelinError, match="bits"):
        ActQuant(4)


def test_activation_qparams_torch_and_numpy_agree():
    x = torch.linspace(-3, 5, 1001)
    for spec in (ActQuant(8), ActQuant(16), ActQuant(16, symmetric=True)):
        scale, zero = activation_qparams(-2.5, 4.0, spec)
        q = quantize_activation_np(x.numpy(), scale, zero, spec)
        fq = fake_quantize_activation(x, scale, zero, spec)
        assert np.allclose((q.astype(np.float32) - zero) * scale, fq.numpy(), atol=0)
        inside = (x > -2.4) & (x < 3.9)
        assert float((fq - x)[inside].abs().max()) <= scale / 2 + 1e-7
    with pytest.raises(EdgelinError, match="not finite"):
        activation_qparams(float("nan"), 1.0, ActQuant(8))
