"""Checks run on every registered token mixer, through its tiny zoo model.

Tests parametrize over `edgelin.models.layers.MIXERS` and call `tiny_zoo_name(mixer)`: it reads
MIXERS and ZOO when called, so a test that registers a mixer at run time (monkeypatch.setitem on
both) runs the same checks on it (tests/models/test_new_mixer.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from edgelin.models import LM, ZOO
from edgelin.models.lm import POSITION
from edgelin.runtime import Session

TOL = 1e-4


def tiny_zoo_name(mixer: str) -> str:
    """The '-tiny' zoo model that tests `mixer`: one whose pattern uses it, single-family models first."""
    found = sorted((len(set(c.pattern)), name) for name, c in ZOO.items() if name.endswith("-tiny") and mixer in c.pattern)
    assert found, f"mixer {mixer!r} is registered but no '-tiny' model in edgelin/models/zoo.py uses it"
    return found[0][1]


def zoo_model(name: str, init_std: float = 0.2) -> LM:
    """A zoo model, by default with a larger init so logits and states are O(1) and a mismatch cannot hide."""
    return LM(dataclasses.replace(ZOO[name], init_std=init_std)).init_weights().eval()


def random_state(model: LM, batch: int) -> list[dict[str, torch.Tensor]]:
    """Random values of each kind's range: whole token counts for a window ring's `seen` (any of its
    2 x window values: empty, part-filled, wrapped) and for learned positions."""
    def fill(kind: str, v: torch.Tensor, layer: dict[str, torch.Tensor]) -> torch.Tensor:
        if kind == "seen":
            return torch.randint_like(v, 0, 2 * layer["key"].shape[2])
        if kind == POSITION:
            return torch.randint_like(v, 0, model.config.max_positions + 1)
        return torch.randn_like(v) * 0.5
    return [{k: fill(k, v, layer) for k, v in layer.items()} for layer in model.init_state(batch)]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|, relative to max |a| where that is above 1: Mamba's states reach ~100 and its
    logits ~10 over a few hundred tokens, where float32 rounding alone is ~1e-4."""
    return ((a - b).abs().max() / a.abs().max().clamp(min=1)).item()


def max_state_diff(a: list[dict], b: list[dict]) -> float:
    return max(rel_diff(x[k], y[k]) for x, y in zip(a, b) for k in x)


def check_step_equals_parallel(model: LM, T: int) -> None:
    """From a random state, T steps give the logits and state of one parallel pass over T tokens."""
    ids = torch.randint(0, model.config.vocab_size, (2, T))
    state0 = random_state(model, 2)
    with torch.no_grad():
        logits, state = model(ids, state0)
        s, outs = state0, []
        for t in range(T):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
    assert logits.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    assert rel_diff(logits, torch.cat(outs, 1)) <= TOL
    assert max_state_diff(state, s) <= TOL


def check_prefill_chunks_then_steps(model: LM) -> None:
    """Two 64-token chunks, then single steps, equal one pass over all 150 tokens."""
    ids = torch.randint(0, model.config.vocab_size, (3, 150))
    with torch.no_grad():
        full, full_state = model(ids)
        s, outs = None, []
        for start in range(0, 128, 64):
            out, s = model(ids[:, start : start + 64], s)
            outs.append(out)
        for t in range(128, 150):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
    assert rel_diff(full, torch.cat(outs, 1)) <= TOL
    assert max_state_diff(full_state, s) <= TOL


def check_onnx_equals_torch(model: LM, package: Path, batch: int, steps: int, prefill: int = 16) -> None:
    """ONNX Runtime on the exported package: one prefill chunk, then `steps` decode steps, as torch."""
    session = Session(package, threads=2)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, prefill + steps))
    ort_logits, ort_state = session.forward(ids[:, :prefill], session.new_state(batch))
    with torch.no_grad():
        ref, torch_state = model(torch.from_numpy(ids[:, :prefill]))
        worst = np.abs(ort_logits - ref.numpy()).max()
        for t in range(prefill, prefill + steps):
            logits, ort_state = session.forward(ids[:, t : t + 1], ort_state)
            ref, torch_state = model.step(torch.from_numpy(ids[:, t : t + 1]), torch_state)
            worst = max(worst, np.abs(logits - ref.numpy()).max())
    assert worst <= TOL, f"batch {batch}: max |ORT - torch| = {worst:.2e}"
    for spec in session.manifest.states:
        assert np.abs(ort_state[spec.input] - torch_state[spec.layer][spec.kind].numpy()).max() <= TOL, spec.input


def check_steps_equal_step(model: LM, K: int) -> None:
    """`LM.steps` over K tokens (the verify graph's form) gives the logits of K `step` calls and the
    state after each of them, from a random state."""
    ids = torch.randint(0, model.config.vocab_size, (2, K))
    state0 = random_state(model, 2)
    with torch.no_grad():
        logits, states = model.steps(ids, state0)
        s, outs = state0, []
        for t in range(K):
            out, s = model.step(ids[:, t : t + 1], s)
            outs.append(out)
            assert max_state_diff(s, states[t]) <= 1e-5, f"state after position {t}"
    assert len(states) == K
    assert logits.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    assert rel_diff(torch.cat(outs, 1), logits) <= 1e-5


def check_verify_equals_decode(package: Path, batch: int = 2, rounds: int = 4) -> None:
    """`Session.verify` on a package: the logits and the state after every position equal what the
    decode graph gives one token at a time, from a state reached by prefill and decode, over `rounds`
    passes. Quantized packages: bit for bit (the decode graph's arithmetic and quantization, shape for
    shape; greedy decoding depends on it); float ones: within 1e-5 of max(1, |value|), same argmax."""
    session = Session(package, threads=1)
    K = session.verify_tokens
    assert K >= 2, f"{package} has no verify graph"
    exact = session.manifest.precision.get("scheme", "fp32") != "fp32"
    rng = np.random.default_rng(0)
    state = session.forward(rng.integers(0, session.vocab_size, (batch, 2 * session.prefill_tokens + 3)),
                            session.new_state(batch))[1]

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return np.array_equal(a, b) if exact else np.abs(a - b).max() <= 1e-5 * max(1.0, float(np.abs(a).max()))

    for _ in range(rounds):
        ids = rng.integers(0, session.vocab_size, (batch, K))
        logits, states = session.verify(ids, state)
        assert len(states) == K
        for t in range(K):
            want, state = session.forward(ids[:, t : t + 1], state)
            assert same(want[:, 0], logits[:, t]), f"logits at position {t}: {np.abs(want[:, 0] - logits[:, t]).max():.2e}"
            assert np.array_equal(want[:, 0].argmax(-1), logits[:, t].argmax(-1)), f"argmax at position {t}"
            for name, a in state.items():
                b = states[t][name]
                assert a.dtype == b.dtype and a.shape == b.shape, name
                assert same(a, b), f"{name} after position {t}"
