"""The mixers and options the importers need: step form run T times equals the chunked form,
from a non-zero state, and prefill chunks interleave with steps."""
import pytest
import torch

from edgelin.models import LM, LMConfig

CONFIGS = {
    "mamba": dict(d_ff=-1, pattern=["mamba"]),
    "delta_net": dict(pattern=["delta_net"]),
    "delta_net-relu-sum-gate-noconv": dict(pattern=["delta_net"], mixers={"delta_net": {
        "qk_activation": "elu", "qk_norm": "sum", "use_gate": True, "use_short_conv": False, "use_beta": False}}),
    "retention-rotary": dict(pattern=["retention"], mixers={"retention": {"rotary": True, "feature_map": "relu"}}),
    "gla-fla-options": dict(pattern=["gla"], mixers={"gla": {
        "use_short_conv": True, "conv_bias": True, "clamp_min": -0.05, "feature_map": "relu", "use_output_gate": False}}),
    "gated_delta-fla-options": dict(pattern=["gated_delta"], mixers={"gated_delta": {
        "heads": 4, "head_dim": 8, "use_gate": False, "allow_neg_eigval": True, "conv_bias": True, "l2norm_eps_inside": True}}),
    "mlstm-uncapped-gates": dict(pattern=["mlstm"], logit_soft_cap=5.0, mixers={"mlstm": {
        "expand_k": 1.0, "expand_v": 2.0, "gate_soft_cap": None, "eps": 1e-3}}),
    "mamba2-dt-limit": dict(d_ff=-1, pattern=["mamba2"], mixers={"mamba2": {"head_dim": 16, "state_size": 8, "n_groups": 2, "dt_max": 0.05}}),
}
TOL = 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_equals_chunked_from_nonzero_state(name):
    model = LM(LMConfig(d_model=32, n_layers=2, n_heads=2, init_std=0.2, **CONFIGS[name])).init_weights().eval()
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        s0 = [{k: torch.randn_like(v) * 0.5 for k, v in layer.items()} for layer in model.init_state(2)]
        full, full_state = model(ids, s0)
        s, outs = s0, []
        for t in range(40):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
        c, chunks = s0, []
        for start in range(0, 40, 16):
            out, c = model(ids[:, start : start + 16], c)
            chunks.append(out)
    assert full.abs().max() > 0.1
    assert (full - torch.cat(outs, 1)).abs().max().item() <= TOL
    assert (full - torch.cat(chunks, 1)).abs().max().item() <= TOL
    for a, b in zip(full_state, s):
        for k in a:
            assert (a[k] - b[k]).abs().max().item() <= TOL, (name, k)
