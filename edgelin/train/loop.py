"""The training loop: AdamW, warmup + cosine, clipping, bf16 autocast on GPU, evaluation, checkpoints.

A run writes into a directory (`run_dir`):

    best/              config.json + model.safetensors of the lowest held-out loss so far
                       (with --ema, of the averaged weights: those are evaluated and saved)
    last/              the same for the latest evaluation, plus optimizer.safetensors, the
                       average (ema.safetensors) and trainer.json: everything `resume` needs (no pickle)
    train_log.json     losses, learning rates and evaluations, rewritten at every evaluation
    loss.png           train and held-out loss against step

Several processes train one model through torch.distributed when started by torchrun (DDP); the
global batch is split evenly between them and rank 0 writes the files.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from edgelin.errors import EdgelinError
from edgelin.models.checkpoint import save_checkpoint
from edgelin.models.lm import LM
from edgelin.train.data import ByteData
from edgelin.train.qat import QATScheme, load_plain_state, plain_model, prepare_qat

LOG_NAME = "train_log.json"
PLOT_NAME = "loss.png"


@dataclass
class TrainConfig:
    """Every knob of a run; saved in the log and in last/trainer.json."""

    steps: int = 5000
    batch_size: int = 64  # global: split across DDP ranks
    seq_len: int = 256
    lr: float = 1e-3
    min_lr: float = -1.0  # -1 = lr / 10
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    dropout: float = 0.0  # on the embedding and on each mixer / MLP output before the residual add
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    eval_every: int = 250
    eval_batch_size: int = 64
    eval_windows: int = 0  # 0 = every non-overlapping held-out window
    log_every: int = 50
    seed: int = 0
    time_budget: float = 0.0  # seconds; 0 = none. The run ends itself in time for a last eval and save.
    save_dtype: str = "float32"
    keep_state: bool = True  # write last/ (weights + optimizer) at every evaluation, for --resume
    distill: float = 0.0  # weight of KL(teacher || model) beside next-token loss; needs a teacher
    qat: QATScheme | None = None

    def __post_init__(self) -> None:
        if isinstance(self.qat, dict):
            self.qat = QATScheme(**self.qat)
        self.betas = tuple(self.betas)
        for key in ("steps", "batch_size", "seq_len", "eval_every", "eval_batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise EdgelinError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "min_lr", "weight_decay", "grad_clip", "dropout", "ema", "time_budget"):
            if not math.isfinite(getattr(self, key)):
                raise EdgelinError(f"--{key.replace('_', '-')} must be a finite number, got {getattr(self, key)}")
        if not self.lr > 0:
            raise EdgelinError(f"--lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise EdgelinError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        for key in ("warmup", "grad_clip", "weight_decay", "time_budget", "eval_windows"):
            if getattr(self, key) < 0:
                raise EdgelinError(f"--{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.seed < 2**32:
            raise EdgelinError(f"--seed must be in [0, 2**32), got {self.seed}")
        if not 0 <= self.dropout < 1:
            raise EdgelinError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.ema < 1:
            raise EdgelinError(f"--ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.distill <= 1:
            raise EdgelinError(f"--distill must be in [0, 1], got {self.distill}")
        if self.save_dtype not in SAVE_DTYPES:
            raise EdgelinError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr < 0 else self.min_lr

    def lr_at(self, step: int) -> float:
        """Learning rate for 1-based `step`: linear warmup, then cosine down to final_lr at `steps`."""
        if step <= self.warmup:
            return self.lr * step / max(1, self.warmup)
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.final_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (self.lr - self.final_lr)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    best_val: float
    best_step: int
    stopped_by: str  # "steps" or "time budget"
    log: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_dist(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgelinError("--device cuda asked for, but torch sees no CUDA device")
    if world == 1:
        return _Dist(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


def add_dropout(model: LM, p: float) -> list:
    """Residual dropout as forward hooks, so the model (and what it exports) keeps no dropout of its own."""
    if p <= 0:
        return []

    def on_tensor(module, args, out):
        return F.dropout(out, p, module.training)

    def on_mixer(module, args, out):
        y, state = out
        return F.dropout(y, p, module.training), state

    handles = [model.embed.register_forward_hook(on_tensor)]
    for block in model.blocks:
        handles.append(block.mixer.register_forward_hook(on_mixer))
        if block.mlp is not None:
            handles.append(block.mlp.register_forward_hook(on_tensor))
    return handles


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def evaluate(model: LM, data: ByteData, cfg: TrainConfig, dd: _Dist | None = None, *, amp: bool = True) -> float:
    """Mean next-byte cross-entropy (nats) over the held-out windows, each starting from a zero state.

    `amp`: bf16 autocast on CUDA as in training; False evaluates in float32.
    """
    dd = dd or _Dist(device=next(model.parameters()).device)
    x_all, y_all = data.val_windows(cfg.seq_len)
    if cfg.eval_windows:
        x_all, y_all = x_all[: cfg.eval_windows], y_all[: cfg.eval_windows]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=dd.device)
    for start in range(dd.rank * cfg.eval_batch_size, len(x_all), dd.world * cfg.eval_batch_size):
        x = x_all[start : start + cfg.eval_batch_size].to(dd.device)
        y = y_all[start : start + cfg.eval_batch_size].to(dd.device)
        with _autocast(dd.device) if amp else nullcontext():
            logits, _ = model(x)
        total[0] += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        total[1] += y.numel()
    if dd.world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


class WeightAverage:
    """Exponential moving average of the parameters in fp32, swapped in to evaluate and save.

    The decay ramps up as min(decay, (1 + step) / (10 + step)), so early averages are not
    dominated by the random init.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.named = list(model.named_parameters())
        self.shadow = [p.detach().float().clone() for _, p in self.named]

    def update(self, step: int) -> None:
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for _, p in self.named], weight)

    @contextmanager
    def swapped_in(self):
        saved = [p.detach().clone() for _, p in self.named]
        with torch.no_grad():
            for (_, p), s in zip(self.named, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(self.named, saved):
                    p.copy_(s)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: s.cpu().contiguous() for (name, _), s in zip(self.named, self.shadow)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        names = [name for name, _ in self.named]
        if sorted(tensors) != sorted(names):
            raise EdgelinError("ema.safetensors does not hold this model's parameters")
        self.shadow = [tensors[name].to(s.device) for name, s in zip(names, self.shadow)]


def _optimizer_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def _load_optimizer_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        name, _, slot = key.rpartition("::")
        if name not in params:
            raise EdgelinError(f"optimizer state names parameter {name!r}, which this model does not have")
        p = params[name]
        opt.state[p][slot] = value.to(p.device) if slot != "step" else value.to(torch.float32)


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_state(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, trainer: dict,
               average: WeightAverage | None = None) -> Path:
    """last/: fp32 weights, optimizer moments, the weight average and the trainer's position, replaced atomically."""
    tmp = save_checkpoint(plain_model(model), run_dir / ".last.new")
    save_file(_optimizer_tensors(model, opt), str(tmp / "optimizer.safetensors"))
    if average is not None:
        save_file(average.tensors(), str(tmp / "ema.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1) + "\n")
    _replace_dir(tmp, run_dir / "last")
    return run_dir / "last"


def read_resume_state(path: str | Path) -> tuple[Path, dict]:
    """Find last/ under a run directory (or accept last/ itself); return it and its trainer.json."""
    path = Path(path)
    for candidate in (path / "last", path):
        if (candidate / "trainer.json").is_file():
            try:
                return candidate, json.loads((candidate / "trainer.json").read_text())
            except json.JSONDecodeError as e:
                raise EdgelinError(f"{candidate / 'trainer.json'} is not valid JSON: {e}") from None
    raise EdgelinError(f"nothing to resume in {path}: no last/trainer.json (was it written by `edgelin train`?)")


def write_plot(log: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps, losses = log["train_step"], log["train_loss"]
    if steps:
        w = max(1, min(50, len(losses) // 20))
        smooth = [sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1, label=f"train (mean of {w} steps)")
    if log["eval"]:
        ax.plot([e["step"] for e in log["eval"]], [e["val_loss"] for e in log["eval"]], "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_title(log.get("title", "training"))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def train(
    model: LM,
    data: ByteData,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    device: str = "auto",
    title: str = "",
    progress: Callable[[dict], None] | None = None,
    teacher: LM | None = None,
) -> TrainResult:
    """Train `model` on `data` and write best/, last/, the log and the plot into `run_dir`.

    Args:
        model: an LM with its starting weights (random init for `train`, a checkpoint for `finetune`).
        data: byte-level train / held-out split.
        cfg: the run's settings.
        run_dir: directory to write into (created; rank 0 only).
        resume: a run directory (or its last/) to continue from: weights, optimizer moments, step and
            log are restored, and the remaining steps see exactly the batches they would have seen.
        device: "auto" (CUDA when present), "cuda" or "cpu".
        title: shown on the plot and stored in the log.
        progress: called with a dict after every logged step and evaluation (for a progress bar).
        teacher: a model of the same vocabulary whose next-token distribution the model also learns,
            with weight `cfg.distill` (knowledge distillation; `edgelin linearize` uses it).

    Returns:
        TrainResult with the best held-out loss and the step it was reached at.

    Example:
        >>> train(LM(ZOO["gla-tiny"]).init_weights(), ByteData.from_file("t.txt", 64), TrainConfig(steps=20), "out/run")
    """
    t_start = time.time()
    dd = _setup_dist(device)
    run_dir = Path(run_dir)
    if cfg.batch_size % dd.world:
        raise EdgelinError(f"--batch-size {cfg.batch_size} does not split evenly over {dd.world} processes")
    if cfg.distill and teacher is None:
        raise EdgelinError("--distill needs a teacher model")
    if len(data.train) < cfg.seq_len + 1:
        raise EdgelinError(f"{data.source}: {len(data.train)} training bytes are fewer than --seq-len {cfg.seq_len} + 1")
    local_batch = cfg.batch_size // dd.world

    if cfg.qat is not None:
        prepare_qat(model, cfg.qat)
    model.to(dd.device).train()
    if cfg.distill:
        teacher = teacher.to(dd.device).eval().requires_grad_(False)
    hooks = add_dropout(model, cfg.dropout)
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=dd.device.type == "cuda"
    )
    average = WeightAverage(model, cfg.ema) if cfg.ema else None

    log: dict[str, Any] = {
        "title": title, "data": data.source, "train_bytes": len(data.train), "val_bytes": len(data.val),
        "parameters": plain_model(model).num_parameters(), "config": model.config.to_dict(), "train_config": cfg.to_dict(),
        "world_size": dd.world, "device": str(dd.device), "train_step": [], "train_loss": [], "lr": [], "eval": [],
    }
    step, best_val, best_step, elapsed_before = 0, math.inf, 0, 0.0
    if resume is not None:
        last, trainer = read_resume_state(resume)
        if trainer.get("qat") != (cfg.to_dict()["qat"]):
            raise EdgelinError(f"{last} was trained with qat={trainer.get('qat')}, this run asks for {cfg.to_dict()['qat']}")
        from edgelin.models.checkpoint import load_checkpoint

        state = {k: v.to(dd.device) for k, v in load_checkpoint(last).state_dict().items()}
        load_plain_state(model, state)
        _load_optimizer_tensors(model, opt, load_file(str(last / "optimizer.safetensors")))
        if average is not None:
            if not (last / "ema.safetensors").is_file():
                raise EdgelinError(f"{last} has no ema.safetensors: it was trained without --ema")
            average.load(load_file(str(last / "ema.safetensors")))
        step, best_val, best_step = trainer["step"], trainer["best_val"], trainer["best_step"]
        elapsed_before = trainer.get("elapsed", 0.0)
        for key in ("train_step", "train_loss", "lr", "eval"):
            log[key] = trainer["log"][key]
        log["resumed_from"] = {"path": str(last), "step": step}

    net = model
    if dd.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dd.device.index] if dd.device.type == "cuda" else None)
    if dd.main:
        run_dir.mkdir(parents=True, exist_ok=True)

    def do_eval() -> None:
        nonlocal best_val, best_step
        with average.swapped_in() if average else nullcontext():
            val = evaluate(model, data, cfg, dd)
            improved = val < best_val
            if improved:
                best_val, best_step = val, step
            if dd.main and improved:
                save_checkpoint(plain_model(model), run_dir / "best", dtype=SAVE_DTYPES[cfg.save_dtype],
                                extra={"step": str(step), "val_loss": f"{val:.6f}"})
        log["eval"].append({"step": step, "val_loss": val, "time": round(elapsed_before + time.time() - t_start, 2)})
        if dd.main:
            trainer = {"step": step, "best_val": best_val, "best_step": best_step, "qat": cfg.to_dict()["qat"],
                       "elapsed": elapsed_before + time.time() - t_start, "train_config": cfg.to_dict(),
                       "log": {k: log[k] for k in ("train_step", "train_loss", "lr", "eval")}}
            if cfg.keep_state:
                save_state(run_dir, model, opt, trainer, average)
            _write_json(run_dir / LOG_NAME, {**log, "best_val": best_val, "best_step": best_step})
        if progress:
            progress({"step": step, "val_loss": val, "best_val": best_val})

    pending: list[tuple[int, torch.Tensor, float]] = []

    def flush() -> None:
        if pending:
            losses = torch.stack([p[1] for p in pending]).tolist()
            for (s, _, lr), loss in zip(pending, losses):
                log["train_step"].append(s)
                log["train_loss"].append(loss)
                log["lr"].append(lr)
            pending.clear()
            if progress:
                progress({"step": log["train_step"][-1], "train_loss": log["train_loss"][-1]})

    stopped_by = "steps"
    step_times: list[float] = []
    last_eval_time = 0.0
    while step < cfg.steps:
        t0 = time.time()
        step += 1
        lr = cfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(cfg.seed * 7919 + step * 31 + dd.rank)  # dropout: a function of the step, for exact resume
        x, y = data.batch(local_batch, cfg.seq_len, seed=cfg.seed, step=step, rank=dd.rank)
        x, y = x.to(dd.device, non_blocking=True), y.to(dd.device, non_blocking=True)
        with _autocast(dd.device):
            logits, _ = net(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        if cfg.distill:
            loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(logits, teacher, x, dd.device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if average is not None:
            average.update(step)
        pending.append((step, loss.detach(), lr))
        if step % cfg.log_every == 0:
            flush()
        step_times.append(time.time() - t0)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            flush()
            t_eval = time.time()
            do_eval()
            last_eval_time = time.time() - t_eval
        if cfg.time_budget and step < cfg.steps and step % 10 == 0 and _out_of_time(cfg, dd, t_start, step_times, last_eval_time):
            stopped_by = "time budget"
            flush()
            do_eval()
            break
    flush()
    for h in hooks:
        h.remove()
    log.update(best_val=best_val, best_step=best_step, steps_done=step, stopped_by=stopped_by,
               wall_seconds=round(elapsed_before + time.time() - t_start, 1))
    if dd.main:
        _write_json(run_dir / LOG_NAME, log)
        write_plot(log, run_dir / PLOT_NAME)
    if dd.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(run_dir, step, best_val, best_step, stopped_by, log)


def distillation_loss(logits: torch.Tensor, teacher: LM, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mean over positions of KL(teacher || model) of the next-token distributions."""
    with torch.no_grad(), _autocast(device):
        target, _ = teacher(x)
    return F.kl_div(F.log_softmax(logits.float(), -1).flatten(0, 1), F.log_softmax(target.float(), -1).flatten(0, 1),
                    log_target=True, reduction="batchmean")


def _out_of_time(cfg: TrainConfig, dd: _Dist, t_start: float, step_times: list[float], eval_time: float) -> bool:
    """True when one more eval interval would overrun the budget; every rank agrees."""
    recent = sorted(step_times[-50:])[len(step_times[-50:]) // 2]
    reserve = 2 * eval_time + 5 * recent + 2.0
    stop = torch.tensor([float(time.time() - t_start + reserve > cfg.time_budget)], device=dd.device)
    if dd.world > 1:
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return bool(stop.item())
