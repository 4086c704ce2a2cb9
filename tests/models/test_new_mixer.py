"""A token mixer defined here and registered at run time gets the same checks as the built-in ones.

Nothing outside this file changes: `ema` goes into MIXERS and `ema-tiny` into ZOO (monkeypatch),
then the registry helpers find it like any other mixer.
"""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgelin.calibration import default_text
from edgelin.errors import EdgelinError
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO, LMConfig
from edgelin.models.config import mixer_options
from edgelin.models.layers import MIXERS
from edgelin.models.layers.base import State, TokenMixer
from edgelin.quantize.pipeline import run_pipeline
from edgelin.quantize.schemes import W8A8
from edgelin.runtime import Session, generate
from registry_helpers import (check_onnx_equals_torch, check_prefill_chunks_then_steps, check_step_equals_parallel,
                              check_steps_equal_step, check_verify_equals_decode, tiny_zoo_name, zoo_model)


@dataclass
class EMAOptions:
    chunk: int = 16


class EMA(TokenMixer):
    """Per-channel moving average: s_t = a * s_{t-1} + (1 - a) * in_proj(x_t), y_t = o_proj(s_t)."""

    def __init__(self, config: LMConfig, layer: int):
        super().__init__()
        self.chunk, d = mixer_options(EMAOptions, config, "ema").chunk, config.d_model
        self.in_proj, self.o_proj = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.decay_logit = nn.Parameter(torch.linspace(-2.0, 2.0, d))

    def state_shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
        return {"recurrent_state": (batch, self.o_proj.in_features)}

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        a = torch.sigmoid(self.decay_logit)
        u, s, out = (1 - a) * self.in_proj(x), state["recurrent_state"], []
        for start in range(0, x.shape[1], self.chunk):  # within a chunk: s_t = a^(t+1) s + sum_j<=t a^(t-j) u_j
            n = min(self.chunk, x.shape[1] - start)
            t = torch.arange(n, device=x.device)
            lag = t[:, None] - t[None]
            weights = torch.where(lag[..., None] >= 0, a ** lag.clamp(min=0)[..., None], 0.0)
            h = torch.einsum("tjd,bjd->btd", weights, u[:, start : start + n]) + a ** (t[:, None] + 1) * s[:, None]
            out.append(h)
            s = h[:, -1]
        return self.o_proj(torch.cat(out, 1)), {"recurrent_state": s}

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        a = torch.sigmoid(self.decay_logit)
        s = a * state["recurrent_state"] + (1 - a) * self.in_proj(x[:, 0])
        return self.o_proj(s)[:, None], {"recurrent_state": s}


@pytest.fixture
def ema(monkeypatch) -> str:
    """Register the EMA mixer and its tiny zoo model for one test; returns the zoo name found for it."""
    monkeypatch.setitem(MIXERS, "ema", EMA)
    monkeypatch.setitem(ZOO, "ema-tiny", LMConfig(d_model=32, n_layers=2, n_heads=2, pattern=["ema"]))
    return tiny_zoo_name("ema")


def test_registry_finds_the_new_mixer(ema):
    assert ema == "ema-tiny"


def test_a_mixer_without_a_tiny_model_is_caught(monkeypatch):
    monkeypatch.setitem(MIXERS, "ema", EMA)
    with pytest.raises(AssertionError, match="'ema'"):
        tiny_zoo_name("ema")


def test_new_mixer_options_are_checked(ema):
    with pytest.raises(EdgelinError, match="option 'chunk' of mixer 'ema' must be an integer >= 1, got 0"):
        LM(LMConfig(d_model=32, n_layers=1, n_heads=2, pattern=["ema"], mixers={"ema": {"chunk": 0}}))


@pytest.mark.parametrize("T", [1, 7, 40])
def test_new_mixer_step_equals_parallel(ema, T):
    check_step_equals_parallel(zoo_model(ema), T)


def test_new_mixer_prefill_chunks_then_steps(ema):
    check_prefill_chunks_then_steps(zoo_model(ema))


@pytest.mark.parametrize("K", [1, 5], ids=lambda k: f"K{k}")
def test_new_mixer_steps_equal_k_steps(ema, K):
    """A mixer without its own `steps` gets TokenMixer's, which calls `step` per position."""
    check_steps_equal_step(zoo_model(ema), K)


def test_new_mixer_onnx_equals_torch(ema, tmp_path):
    model = zoo_model(ema, 0.1)
    check_onnx_equals_torch(model, export_package(model, tmp_path / "pkg", prefill_tokens=16), batch=2, steps=32)


def test_new_mixer_int8_quantize_and_validate(ema, tmp_path):
    fp = export_package(zoo_model(ema, 0.1), tmp_path / "fp", prefill_tokens=16)
    result = run_pipeline(fp, tmp_path / "int8", W8A8(), default_text(), streams=2, tokens=256, horizon=512, eval_streams=2)
    assert abs(result["loss_increase_pct"]) < 1.0
    assert len(list(generate(Session(tmp_path / "int8"), [72, 105], max_new_tokens=8, seed=0))) == 8
    check_verify_equals_decode(fp)  # the verify graph, through the default `steps`
    check_verify_equals_decode(tmp_path / "int8")
