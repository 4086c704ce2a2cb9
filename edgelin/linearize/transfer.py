"""Attention transfer (LoLCATs' first stage): each linearized layer learns to reproduce its teacher layer.

Every step runs the teacher on a batch, records what enters and leaves each of its attention layers,
runs the student's layer on the same input and minimises the squared error relative to the teacher
output's power, summed over layers. Only the linearized layers train (their projections, decay gates,
feature maps, norms, mix), each against its own teacher layer, so the fit takes a few hundred steps.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from edgelin.errors import EdgelinError
from edgelin.linearize.convert import converted_layers, transfer_parameters
from edgelin.models.lm import LM
from edgelin.train.data import ByteData
from edgelin.train.loop import _autocast, _setup_dist


@dataclass
class TransferConfig:
    steps: int = 200
    batch_size: int = 32  # global, split over torchrun processes
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 20
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "seq_len", "log_every"):
            if getattr(self, key) < 1:
                raise EdgelinError(f"--transfer-{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise EdgelinError(f"--transfer-lr must be a number > 0, got {self.lr}")

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine to a tenth."""
        if step <= self.warmup:
            return self.lr * step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def attention_transfer(teacher: LM, student: LM, data: ByteData, cfg: TransferConfig, *, device: str = "auto",
                       progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Fit the student's linearized layers to the teacher's attention outputs, in place.

    Returns the log: steps, the mean relative error per logged step, and the last error of each layer.
    """
    dd = _setup_dist(device)
    if cfg.batch_size % dd.world:
        raise EdgelinError(f"--transfer-batch-size {cfg.batch_size} does not split evenly over {dd.world} processes")
    layers = converted_layers(teacher.config)
    teacher.to(dd.device).eval().requires_grad_(False)
    student.to(dd.device).train().requires_grad_(False)
    params = transfer_parameters(student)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=dd.device.type == "cuda")
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [teacher.blocks[i].mixer.register_forward_hook(
        lambda _m, args, out, i=i: seen.__setitem__(i, (args[0], out[0]))) for i in layers]
    log: dict[str, Any] = {"config": asdict(cfg), "layers": layers, "step": [], "loss": []}
    try:
        for step in range(1, cfg.steps + 1):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            x, _ = data.batch(cfg.batch_size // dd.world, cfg.seq_len, seed=cfg.seed + 1, step=step, rank=dd.rank)
            with torch.no_grad(), _autocast(dd.device):
                teacher(x.to(dd.device))
            errors = []
            with _autocast(dd.device):
                for i in layers:
                    inp, target = seen[i]
                    mixer = student.blocks[i].mixer
                    out, _ = mixer(inp, mixer.init_state(inp.shape[0], dd.device))
                    target = target.float()
                    errors.append((out.float() - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12))
            loss = torch.stack(errors).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if dd.world > 1:
                for p in params:  # gloo has no AVG
                    dist.all_reduce(p.grad)
                    p.grad /= dd.world
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps:
                log["step"].append(step)
                log["loss"].append(loss.item())
                log["layer_loss"] = [e.item() for e in errors]
                if progress:
                    progress({"step": step, "loss": log["loss"][-1]})
    finally:
        for h in hooks:
            h.remove()
        seen.clear()
    student.requires_grad_(True).eval()
    return log
