"""Shared checks for the kernel tests: relative RMS error with a printed diagnosis."""

import torch


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double()
    err = (ref - out).pow(2).mean().sqrt().item()
    base = ref.pow(2).mean().sqrt().item()
    return err / max(base, 1e-6)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float) -> None:
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN in output"
    r = rms_ratio(ref, out)
    assert r < ratio, f"{name}: rms ratio {r:.3e} >= {ratio:.1e}"
