"""flash-linear-attention hub layouts (GLA, Gated DeltaNet, DeltaNet, RetNet): models made with fla's
own classes and save_pretrained, imported and exported; logits and every ONNX decode step equal a
transcription of fla's layers on fla's own naive_* references (fla_reference.py)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("fla")

from edgelin.exporters.package import export_package  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.runtime import Session  # noqa: E402

from . import fla_reference  # noqa: E402

VOCAB, SEQ, PROMPT, DECODE_STEPS = 128, 64, 16, 32
TOL = 1e-4
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128, fuse_cross_entropy=False)

CASES = {
    # name: (fla config class, its kwargs, edgelin source layout)
    "gla": ("GLAConfig", dict(num_heads=2, use_short_conv=True), "fla-gla"),
    "gla-gqa-relu-clamp-nogate-tied": ("GLAConfig", dict(
        num_heads=4, num_kv_heads=2, feature_map="relu", clamp_min=-0.05, use_output_gate=False, tie_word_embeddings=True), "fla-gla"),
    "gated_deltanet": ("GatedDeltaNetConfig", dict(num_heads=2, head_dim=16, expand_v=2), "fla-gated-deltanet"),
    "gated_deltanet-gva-sigmoid-negeig": ("GatedDeltaNetConfig", dict(
        num_heads=2, num_v_heads=4, head_dim=16, expand_v=1, allow_neg_eigval=True, output_gate_activation="sigmoid"),
        "fla-gated-deltanet"),
    "delta_net": ("DeltaNetConfig", dict(num_heads=2), "fla-deltanet"),
    "delta_net-elu-sum-gate": ("DeltaNetConfig", dict(num_heads=2, qk_activation="elu", qk_norm="sum", use_gate=True), "fla-deltanet"),
    "retnet": ("RetNetConfig", dict(num_heads=2), "fla-retnet"),
    "retnet-gqa": ("RetNetConfig", dict(num_heads=4, num_kv_heads=2, expand_v=1), "fla-retnet"),
}


def perturb(model):
    """fla's init leaves norms at 1 and logits tiny; move every weight so a wrong map cannot hide."""
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if name.endswith("A_log"):
            continue
        if p.dim() >= 2:
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if "embeddings" in name or "lm_head" in name else 0.05))
        elif p.dim() == 1:
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module", params=list(CASES))
def checkpoint(request, tmp_path_factory):
    import fla.models

    config_cls, kwargs, layout = CASES[request.param]
    config = getattr(fla.models, config_cls)(**COMMON, **kwargs)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        model = perturb(AutoModelForCausalLM.from_config(config)).eval()
    path = tmp_path_factory.mktemp("fla") / request.param
    model.save_pretrained(path)
    return request.param, model, path, layout


def test_logits_equal_fla_reference(checkpoint):
    name, fla_model, path, layout = checkpoint
    loaded = load_model(str(path))
    assert loaded.source_layout == layout
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ref = fla_reference.forward(fla_model, ids)
    with torch.no_grad():
        ours, _ = loaded.model(ids)
    assert ref.abs().max() > 1.0, "logits too small for the comparison to mean anything"
    diff = (ref - ours).abs().max().item()
    assert diff <= TOL, f"{name}: max |edgelin - fla reference| = {diff:.2e}"


def test_onnx_decode_steps_equal_fla_reference(checkpoint, tmp_path):
    name, fla_model, path, layout = checkpoint
    loaded = load_model(str(path))
    pkg = export_package(loaded.model, tmp_path / "pkg", prefill_tokens=8, source_layout=loaded.source_layout)
    assert json.loads((pkg / "manifest.json").read_text())["source_layout"] == layout
    ids = torch.randint(0, VOCAB, (1, PROMPT + DECODE_STEPS), generator=torch.Generator().manual_seed(2))
    ref = fla_reference.forward(fla_model, ids)[0].numpy()  # causal: position t = the step after token t
    session = Session(pkg, threads=2)
    logits, state = session.forward(ids[:, :PROMPT].numpy(), session.new_state(1))
    worst = float(np.abs(logits[0] - ref[:PROMPT]).max())
    for t in range(PROMPT, PROMPT + DECODE_STEPS):
        logits, state = session.forward(ids[:, t : t + 1].numpy(), state)
        worst = max(worst, float(np.abs(logits[0, -1] - ref[t]).max()))
    assert worst <= TOL, f"{name}: max |ONNX - fla reference| = {worst:.2e}"
