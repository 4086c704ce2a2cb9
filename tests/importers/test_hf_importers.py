"""Transformers checkpoints (Mamba2, Mamba, LFM2, xLSTM) made here with transformers' own classes and
save_pretrained, imported and exported: logits equal transformers' forward, and the ONNX decode
graph follows transformers' cached greedy generation step by step."""
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgelin.errors import EdgelinError  # noqa: E402
from edgelin.exporters.package import export_package  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.runtime import Session  # noqa: E402

VOCAB, SEQ, DECODE_STEPS, PROMPT = 128, 64, 32, 16
TOL = 1e-4
MAX_CONTEXT = 64  # LFM2's attention cache; PROMPT + DECODE_STEPS stays below it, so the export is exact

FAMILIES = {
    # n_groups 2 and head_dim 16: grouped B/C and the grouped gated norm are exercised.
    "mamba2": lambda: transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16,
        n_groups=2, expand=2, conv_kernel=4, chunk_size=16)),
    "mamba": lambda: transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)),
    # GQA (4 heads, 2 kv heads), q/k norms, rotary, conv and attention layers interleaved, tied embeddings.
    "lfm2": lambda: transformers.Lfm2ForCausalLM(transformers.Lfm2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["conv", "full_attention", "conv", "full_attention"], norm_eps=1e-5,
        max_position_embeddings=512)),
    # qk and v widths 64 and 128 (transformers' cache rounds them up to 64), 4 heads; gate and logit caps
    # small enough that their tanh bends; chunks of 16 so that transformers' prefill crosses chunks.
    "xlstm": lambda: xlstm_gates(transformers.xLSTMForCausalLM(xlstm_config())),
}
LAYOUTS = {"mamba2": "hf-mamba2", "mamba": "hf-mamba", "lfm2": "hf-lfm2", "xlstm": "hf-xlstm"}


def xlstm_config(**changes):
    return transformers.xLSTMConfig(**{
        "vocab_size": VOCAB, "hidden_size": 128, "num_hidden_layers": 2, "num_heads": 4, "gate_soft_cap": 4.0,
        "output_logit_soft_cap": 5.0, "chunk_size": 16, **changes})


def xlstm_gates(model):
    """Gate biases that open the memory: transformers' init (input gates at -10) leaves it all but shut."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("igate_preact.bias", "fgate_preact.bias")):
                p.normal_(2.0 if "fgate" in name else 0.0, 1.0)
    return model


def scale_up(model):
    """Random weights large enough that the logits are O(1) and a mismatch cannot hide in small numbers."""
    gen = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if "embed" in name or "lm_head" in name else 0.05))
        elif "norm" in name:
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)  # norms start at 1: move them so a wrong map shows
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    with torch.no_grad():
        hf = scale_up(FAMILIES[request.param]()).eval()
    path = tmp_path_factory.mktemp("hf") / request.param
    hf.save_pretrained(path)
    return request.param, hf, path


def test_logits_equal_transformers_forward(checkpoint):
    family, hf, path = checkpoint
    loaded = load_model(str(path), max_context=MAX_CONTEXT)
    assert loaded.source_layout == LAYOUTS[family]
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    ref = hf(ids).logits
    ours, _ = loaded.model(ids)
    assert ref.abs().max() > 1.0, "logits too small for the comparison to mean anything"
    diff = (ref - ours).abs().max().item()
    assert diff <= TOL, f"{family}: max |edgelin - transformers| = {diff:.2e}"


def test_onnx_decode_follows_transformers_cached_generation(checkpoint, tmp_path):
    family, hf, path = checkpoint
    loaded = load_model(str(path), max_context=MAX_CONTEXT)
    pkg = export_package(loaded.model, tmp_path / "pkg", prefill_tokens=8, source_layout=loaded.source_layout)
    prompt = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    out = hf.generate(prompt, max_new_tokens=DECODE_STEPS, do_sample=False, output_logits=True,
                      return_dict_in_generate=True, use_cache=True, pad_token_id=0)
    generated = out.sequences[0, PROMPT:].numpy()
    session = Session(pkg, threads=2)
    logits, state = session.forward(prompt.numpy(), session.new_state(1))  # prefill graph (2 chunks)
    worst = 0.0
    for t in range(DECODE_STEPS):
        ref = out.logits[t][0].numpy()
        worst = max(worst, float(np.abs(logits[0, -1] - ref).max()))
        assert int(logits[0, -1].argmax()) == int(generated[t]), f"{family}: step {t} picks another token"
        logits, state = session.forward(generated[None, t : t + 1], state)  # decode graph
    assert worst <= TOL, f"{family}: max |ONNX - transformers cached step| = {worst:.2e}"
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["source_layout"] == LAYOUTS[family]
    if family == "lfm2":
        assert manifest["max_context"] == MAX_CONTEXT
    else:
        assert "max_context" not in manifest


def test_sharded_checkpoint_imports_the_same(checkpoint, tmp_path):
    family, hf, path = checkpoint
    if family != "mamba2":
        pytest.skip("sharding is layout-independent; once is enough")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    a = load_model(str(path)).model.state_dict()
    b = load_model(str(tmp_path / "sharded")).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_weight_and_unknown_model_type_are_one_clear_error(checkpoint, tmp_path):
    family, hf, path = checkpoint
    if family != "mamba":
        pytest.skip("error paths are layout-independent")
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["backbone.layers.1.mixer.A_log"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(EdgelinError, match=r"missing weights.*backbone\.layers\.1\.mixer\.A_log"):
        load_model(str(bad))
    cfg = json.loads((path / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon_mamba_xl"}))
    with pytest.raises(EdgelinError, match="unknown model_type 'falcon_mamba_xl'"):
        load_model(str(bad))


@pytest.fixture(scope="module")
def xlstm_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    with torch.no_grad():
        hf = scale_up(FAMILIES["xlstm"]()).eval()
    path = tmp_path_factory.mktemp("hf") / "xlstm"
    hf.save_pretrained(path)
    return hf, path


def test_xlstm_300_tokens_from_a_nonzero_state(xlstm_checkpoint):
    """From one random (C, n, m) per layer, transformers' forward over 300 tokens (its chunkwise form over
    18 chunks of 16, then its recurrent form for the last 12), edgelin's 300 steps and edgelin's chunked
    form agree: logits and final states."""
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    hf, path = xlstm_checkpoint
    model = load_model(str(path)).model
    B, T = 2, 300
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, VOCAB, (B, T), generator=gen)
    ours0 = [{k: torch.randn(v.shape, generator=gen) * 0.5 for k, v in layer.items()} for layer in model.init_state(B)]
    cache = xLSTMCache(hf.config, B, dtype=torch.float32)
    cache.rnn_state = {i: (s["cell_state"].clone(), s["normalizer_state"].clone(), s["max_state"][..., None].clone())
                       for i, s in enumerate(ours0)}
    ref = hf(ids, cache=cache, use_cache=True).logits
    chunked, chunked_state = model(ids, ours0)
    state, steps = ours0, []
    for t in range(T):
        logits, state = model.step(ids[:, t : t + 1], state)
        steps.append(logits)
    assert ref.abs().max() > 1.0, "logits too small for the comparison to mean anything"
    for name, ours, final in (("step", torch.cat(steps, 1), state), ("chunked", chunked, chunked_state)):
        diff = (ref - ours).abs().max().item()
        assert diff <= TOL, f"{name}: max |edgelin - transformers| = {diff:.2e}"
        for i, (C, n, m) in cache.rnn_state.items():
            for kind, theirs in (("cell_state", C), ("normalizer_state", n), ("max_state", m[..., 0])):
                assert (final[i][kind] - theirs).abs().max() <= TOL * max(1.0, theirs.abs().max().item()), (name, i, kind)


def test_xlstm_fused_weights_import_the_same(xlstm_checkpoint, tmp_path, monkeypatch):
    """weight_mode "fused" (one q/k/v/o-gate projection, one i/f-gate projection, one up/gate projection)
    holds the same numbers in fewer tensors. transformers' init of a fused model fails on its own gate
    biases, so the fused model is filled from the single one with init switched off."""
    from transformers.models.xlstm import modeling_xlstm

    hf, path = xlstm_checkpoint
    monkeypatch.setattr(modeling_xlstm.xLSTMPreTrainedModel, "_init_weights", lambda self, module: None)
    fused = transformers.xLSTMForCausalLM(xlstm_config(weight_mode="fused")).eval()
    single = hf.state_dict()
    state = {}
    for name in fused.state_dict():
        layer = name.rsplit(".", 2)[0]
        if ".qkv_opreact." in name:
            parts = [single[name.replace("qkv_opreact", p)] for p in ("q", "k", "v", "ogate_preact")]
        elif ".ifgate_preact." in name:
            parts = [single[name.replace("ifgate_preact", p)] for p in ("igate_preact", "fgate_preact")]
        elif ".proj_up_gate_z." in name:
            parts = [single[f"{layer}.proj_up_gate.weight"], single[f"{layer}.proj_up.weight"]]
        else:
            parts = [single[name]]
        state[name] = torch.cat(parts)
    fused.load_state_dict(state)
    fused.save_pretrained(tmp_path / "fused")
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(5))
    ref = fused(ids, use_cache=False).logits
    assert (ref - hf(ids, use_cache=False).logits).abs().max() <= TOL
    ours, _ = load_model(str(tmp_path / "fused")).model(ids)
    assert (ref - ours).abs().max() <= TOL
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "fused" / "model.safetensors"))
    name = "backbone.blocks.1.mlstm_layer.qkv_opreact.weight"
    tensors[name] = tensors[name][:-3].clone()
    save_file(tensors, str(tmp_path / "fused" / "model.safetensors"))
    with pytest.raises(EdgelinError, match=f"weight shapes do not match config.json .*{name.removeprefix('backbone.')} has"):
        load_model(str(tmp_path / "fused"))
