"""Every token mixer and the hybrid LM: the step form run T times equals the chunked parallel form."""
import dataclasses

import pytest
import torch

from edgelin.models import LM, ZOO

# Larger init than the zoo's so logits and states are O(1) and a mismatch cannot hide in small numbers.
MODELS = ["gla-tiny", "gated-delta-tiny", "mamba2-tiny", "retention-tiny", "hybrid-tiny"]
TOL = 1e-4


def make(name: str) -> LM:
    config = dataclasses.replace(ZOO[name], init_std=0.2)
    return LM(config).init_weights().eval()


def random_state(model: LM, batch: int) -> list[dict[str, torch.Tensor]]:
    state = []
    for layer in model.init_state(batch):
        state.append({k: (torch.rand_like(v).round() if k == "window_mask" else torch.randn_like(v) * 0.5) for k, v in layer.items()})
    return state


def max_diff(a: list[dict], b: list[dict]) -> float:
    return max((x[k] - y[k]).abs().max().item() for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("T", [1, 7, 64, 300], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", MODELS)
def test_step_equals_parallel_from_nonzero_state(name, T):
    model = make(name)
    ids = torch.randint(0, 256, (2, T))
    state0 = random_state(model, 2)
    with torch.no_grad():
        logits, state = model(ids, state0)
        s, outs = state0, []
        for t in range(T):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
    step_logits = torch.cat(outs, 1)
    assert logits.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    assert (logits - step_logits).abs().max().item() <= TOL
    assert max_diff(state, s) <= TOL


@pytest.mark.parametrize("name", MODELS)
def test_prefill_chunks_then_steps_equal_parallel(name):
    model = make(name)
    ids = torch.randint(0, 256, (3, 150))
    with torch.no_grad():
        full, full_state = model(ids)
        s, outs = None, []
        for start in range(0, 128, 64):
            out, s = model(ids[:, start : start + 64], s)
            outs.append(out)
        for t in range(128, 150):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
    assert (full - torch.cat(outs, 1)).abs().max().item() <= TOL
    assert max_diff(full_state, s) <= TOL


def test_swa_window_forgets_tokens_beyond_the_window():
    """A token more than `window` positions back has no influence on the sliding-window layer."""
    model = make("hybrid-tiny")
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

    model = make("hybrid-tiny")
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(tmp_path / "ckpt")
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])
