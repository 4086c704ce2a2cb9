"""Every registered token mixer, through its tiny zoo model: the step form run T times equals the chunked parallel form."""
import dataclasses

import pytest
import torch

from edgelin.models import LM, ZOO, LMConfig
from edgelin.models.layers import MIXERS
from registry_helpers import (check_prefill_chunks_then_steps, check_step_equals_parallel, check_steps_equal_step,
                              tiny_zoo_name, zoo_model)

# The options of imported softmax-attention models (hf_llama, hf_qwen2, hf_qwen3, hf_gpt2), on full attention
# capped at 32 tokens so that T = 64 and 300 run past the cap: GPT-2's LayerNorm, GELU MLP with biases and
# learned positions (40 of them: the counter saturates within T = 64); Llama 3's rope rescale with q/k/v
# biases but none on o_proj (Qwen2), per-head q/k norms, head_dim != d_model / n_heads, grouped heads.
ATTENTION_OPTIONS = {
    "gpt2": LMConfig(d_model=64, n_layers=2, n_heads=4, pattern=["swa"], d_ff=96, norm="layer", mlp="gelu_tanh",
                     mlp_bias=True, max_positions=40, tie_embeddings=False,
                     mixers={"swa": {"window": 32, "rope_theta": 0.0, "bias": True, "full_attention": True}}),
    "gpt2-gelu": LMConfig(d_model=64, n_layers=2, n_heads=4, pattern=["swa"], d_ff=96, norm="layer", mlp="gelu",
                          mlp_bias=True, max_positions=500, mixers={"swa": {"window": 32, "rope_theta": 0.0}}),
    "llama3-qwen": LMConfig(d_model=64, n_layers=2, n_heads=4, pattern=["swa"], mlp_bias=True, mixers={"swa": {
        "window": 32, "n_kv_heads": 2, "head_dim": 24, "qk_norm": True, "bias": True, "o_bias": False,
        "full_attention": True, "rope_theta": 500000.0, "rope_scaling": {
            "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}}}),
}


def attention_model(name: str) -> LM:
    return LM(dataclasses.replace(ATTENTION_OPTIONS[name], init_std=0.2)).init_weights().eval()


@pytest.mark.parametrize("T", [1, 7, 64, 300], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", list(ATTENTION_OPTIONS))
def test_attention_options_step_equals_parallel_from_nonzero_state(name, T):
    check_step_equals_parallel(attention_model(name), T)


@pytest.mark.parametrize("name", list(ATTENTION_OPTIONS))
def test_attention_options_prefill_chunks_then_steps_equal_parallel(name):
    check_prefill_chunks_then_steps(attention_model(name))


@pytest.mark.parametrize("name", list(ATTENTION_OPTIONS))
def test_attention_options_steps_equal_k_steps(name):
    """LM.steps with learned positions (a position per step in layer 0's states), rope scaling, grouped heads."""
    check_steps_equal_step(attention_model(name), 5)


def test_learned_positions_count_tokens_and_saturate():
    """layer 0 carries `position`: the tokens seen, capped at max_positions; each token reads its own row of
    the table (the last row from max_positions - 1 on)."""
    model = attention_model("gpt2")
    ids = torch.randint(0, 256, (2, 50))
    with torch.no_grad():
        _, state = model(ids[:, :30])
        assert state[0]["position"].tolist() == [[30.0], [30.0]]
        _, state = model(ids[:, 30:], state)
        assert state[0]["position"].tolist() == [[40.0], [40.0]]
        model.pos_embed.weight[39:] = 0.0
        changed, _ = model(ids)
        model.pos_embed.weight[39] = 1.0
        moved, _ = model(ids)
    assert torch.equal(changed[:, :39], moved[:, :39]) and not torch.allclose(changed[:, 39:], moved[:, 39:])


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_every_registered_mixer_has_a_tiny_zoo_model(mixer):
    tiny_zoo_name(mixer)  # fails, naming the mixer, when no '-tiny' model uses it


@pytest.mark.parametrize("T", [1, 7, 64, 300], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_step_equals_parallel_from_nonzero_state(mixer, T):
    check_step_equals_parallel(zoo_model(tiny_zoo_name(mixer)), T)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_prefill_chunks_then_steps_equal_parallel(mixer):
    check_prefill_chunks_then_steps(zoo_model(tiny_zoo_name(mixer)))


def test_swa_window_forgets_tokens_beyond_the_window():
    """A token more than `window` positions back has no influence on the sliding-window layer."""
    model = zoo_model("hybrid-tiny")
    swa = model.blocks[3].mixer
    W = swa.window
    x = torch.randn(1, W + 5, 64)
    y = torch.randn(1, W + 5, 64)
    y[:, 5:] = x[:, 5:]  # differ only in the first 5 tokens
    with torch.no_grad():
        ox, _ = swa(x, swa.init_state(1))
        oy, _ = swa(y, swa.init_state(1))
    assert torch.allclose(ox[:, -1], oy[:, -1], atol=1e-6)
    assert not torch.allclose(ox[:, W - 1], oy[:, W - 1], atol=1e-6)


def test_config_json_round_trip(tmp_path):
    from edgelin.models import LMConfig

    for config in [*ZOO.values(), *ATTENTION_OPTIONS.values()]:
        config.save(tmp_path / "config.json")
        assert LMConfig.load(tmp_path / "config.json") == config


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    from edgelin.models import load_checkpoint, save_checkpoint

    model = zoo_model("hybrid-tiny")
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])


@pytest.mark.parametrize("K", [1, 2, 6], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("mixer", list(MIXERS))
def test_steps_equal_k_steps(mixer, K):
    """LM.steps (the verify graph's form: products batched over K, recurrences position by position)
    equals K step calls, state after every position included."""
    check_steps_equal_step(zoo_model(tiny_zoo_name(mixer)), K)
