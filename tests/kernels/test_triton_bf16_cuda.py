"""bf16 Triton kernels at a real head size against the float32 recurrence (CUDA only).

Run on the GPU machine: `pytest tests/kernels/test_triton_bf16_cuda.py`. fla warns that Triton
3.4-3.7.0 miscompiles a gated chunk backward on Hopper, so the gradients are checked here too.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from tests.kernels._check import assert_close  # noqa: E402
from tests.kernels.test_gated_delta_triton import local_naive_gated_delta  # noqa: E402
from tests.kernels.test_gla_triton import local_naive_gla  # noqa: E402
from edgelin.kernels.gated_delta.triton_chunk import chunk_gated_delta_rule  # noqa: E402
from edgelin.kernels.gla.triton_chunk import chunk_gla  # noqa: E402

# bf16 inputs and bf16 intermediates against a float32 loop on the same (bf16-rounded) inputs
RATIO = {"dg": 2e-2}
DEFAULT_RATIO = 1e-2


def _run(fn, tensors, h0, do, dht, as_float):
    leaves = [(t.float() if as_float else t).detach().clone().requires_grad_() for t in tensors]
    s0 = h0.clone().requires_grad_()
    o, ht = fn(*leaves, initial_state=s0, output_final_state=True)
    ((o.float() * do.float()).sum() + (ht * dht).sum()).backward()
    return [o, ht] + [t.grad for t in leaves] + [s0.grad]


@pytest.mark.parametrize("op", ["gla", "gated_delta"])
@pytest.mark.parametrize("T,gate_norm", [(1000, 1.0), (777, 0.1), (1500, 16.0)], ids=["T1000-gn1", "T777-gn0.1", "T1500-gn16"])
def test_bf16_matches_fp32_recurrence(op, T, gate_norm):
    B, H, D = 1, 4, 128
    gen = torch.Generator(device="cuda").manual_seed(T)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if op == "gla":
        tensors = [q.bfloat16(), k.bfloat16(), v.bfloat16(), F.logsigmoid(rnd(B, T, H, D)) / gate_norm]
        ours, ref, names = chunk_gla, local_naive_gla, ["o", "ht", "dq", "dk", "dv", "dg", "dh0"]
    else:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        tensors = [q.bfloat16(), k.bfloat16(), v.bfloat16(), F.logsigmoid(rnd(B, T, H)) / gate_norm, rnd(B, T, H).sigmoid()]
        ours, ref = chunk_gated_delta_rule, local_naive_gated_delta
        names = ["o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    h0 = rnd(B, H, D, D)
    do = rnd(B, T, H, D).bfloat16()
    dht = rnd(B, H, D, D)
    expected = _run(ref, tensors, h0, do, dht, as_float=True)
    got = _run(ours, tensors, h0, do, dht, as_float=False)
    for name, r, x in zip(names, expected, got):
        assert_close(f"{op}:{name}", r, x, RATIO.get(name, DEFAULT_RATIO))


@pytest.mark.parametrize("T,gates", [(1000, (0.0, 1.0)), (777, (0.0, 5.0)), (1500, (8.0, 2.0))],
                         ids=["T1000-i0+-1", "T777-i0+-5", "T1500-i8+-2"])
def test_mlstm_bf16_matches_fp32_recurrence(T, gates):
    """mLSTM: bf16 q, k, v into the chunk kernel against the float32 step loop; o, (C, n, m), every gradient."""
    from edgelin.kernels.mlstm.reference import naive_recurrent_mlstm
    from edgelin.kernels.mlstm.triton_chunk import chunk_mlstm

    B, H, D = 1, 4, 128
    gen = torch.Generator(device="cuda").manual_seed(T)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    qkv = [rnd(B, T, H, D).bfloat16() for _ in range(3)]
    gate = [rnd(B, T, H) * gates[1] + gates[0], F.logsigmoid(rnd(B, T, H) + 2)]
    state0 = (rnd(B, H, D, D), rnd(B, H, D), rnd(B, H))
    upstream = [rnd(B, T, H, D).bfloat16(), rnd(B, H, D, D), rnd(B, H, D), rnd(B, H)]

    def run(fn, as_float):
        leaves = [(t.float() if as_float else t).detach().clone().requires_grad_() for t in qkv + gate]
        s0 = [s.clone().requires_grad_() for s in state0]
        o, final = fn(*leaves, initial_state=tuple(s0), output_final_state=True)
        sum((x.float() * u.float()).sum() for x, u in zip((o, *final), upstream)).backward()
        return [o, *final] + [t.grad for t in leaves + s0]

    expected, got = run(naive_recurrent_mlstm, True), run(chunk_mlstm, False)
    for name, r, x in zip(["o", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0"], expected, got):
        assert_close(f"mlstm:{name}", r, x, RATIO.get(name, DEFAULT_RATIO))
