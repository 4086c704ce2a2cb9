"""Every registered token mixer, through its tiny zoo model: the step form run T times equals the chunked parallel form."""
import pytest
import torch

from edgelin.models import ZOO
from edgelin.models.layers import MIXERS
from registry_helpers import (check_prefill_chunks_then_steps, check_step_equals_parallel, check_steps_equal_step,
                              tiny_zoo_name, zoo_model)


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

    for config in ZOO.values():
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
