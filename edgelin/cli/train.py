"""`edgelin train`, `edgelin finetune` and `edgelin linearize`: language-model training on a text file.

Each writes a run directory that is also a checkpoint: config.json + model.safetensors (the best
held-out loss), train_log.json, loss.png, command.txt and last/ (what --resume needs). The run is
built in a hidden temporary directory beside -o and renamed into place when it ends. Under torchrun
every process runs the same command and rank 0 writes.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgelin.atomic import check_destination
from edgelin.cli import app, console, user_errors
from edgelin.cli.ui import note
from edgelin.errors import EdgelinError


def _resolve_config(spec: str):
    from edgelin.models.config import LMConfig
    from edgelin.models.zoo import ZOO, zoo_config

    path = Path(spec)
    if path.is_dir():
        return LMConfig.load(path / "config.json")
    if path.is_file():
        return LMConfig.load(path)
    if spec in ZOO:
        return zoo_config(spec)
    raise EdgelinError(f"--config {spec!r} is neither a config.json, a checkpoint directory nor a built-in model ({', '.join(ZOO)})")


def _train_config(**kwargs):
    from edgelin.train.loop import TrainConfig
    from edgelin.train.qat import QATScheme

    qat, group, head = kwargs.pop("qat"), kwargs.pop("qat_group_size"), kwargs.pop("qat_head")
    scheme = QATScheme.parse(qat, group, head) if qat else None
    return TrainConfig(**kwargs, qat=scheme)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _finish(work: Path, out: Path) -> None:
    """best/ becomes the run directory's own checkpoint; the directory is renamed into place."""
    best = work / "best"
    if best.is_dir():
        for name in ("config.json", "model.safetensors"):
            os.replace(best / name, work / name)
        shutil.rmtree(best)
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


def _run(model, text: Path, out: Path, force: bool, resume: Optional[Path], device: str, title: str, cfg_kwargs: dict) -> None:
    from edgelin.train.data import ByteData
    from edgelin.train.loop import read_resume_state, train

    cfg = _train_config(**cfg_kwargs)
    if device not in ("auto", "cpu", "cuda"):
        raise EdgelinError(f"--device must be auto, cpu or cuda, got {device!r}")
    check_destination(out, what="run directory", force=force, folder=True)
    if resume is not None:
        read_resume_state(resume)  # fails now, before any work, if there is nothing to resume
    data = ByteData.from_file(text, cfg.seq_len)
    main = _rank() == 0
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)) if main else out.parent / f".{out.name}.rank{_rank()}"
    if main:
        (work / "command.txt").write_text(shlex.join(["edgelin", *sys.argv[1:]]) + "\n")
        console.print(f"training {title}: {model.num_parameters() / 1e6:.2f}M parameters, "
                      f"{len(data.train):,} train / {len(data.val):,} held-out bytes, run dir {work}")
    previous = signal.signal(signal.SIGTERM, _terminate)  # torchrun and job schedulers stop runs with SIGTERM
    try:
        with _progress(cfg.steps) as report:
            result = train(model, data, cfg, work, resume=resume, device=device, title=title, progress=report if main else None)
    except BaseException:
        if main:
            if (work / "last").is_dir():
                note(f"interrupted; the partial run is kept at {work} (continue with --resume {work})")
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if main:
        _finish(work, out)
        console.print(f"best held-out loss {result.best_val:.4f} at step {result.best_step} "
                      f"({result.steps_done} steps, stopped by {result.stopped_by}); wrote [bold]{out}[/]")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def _progress(steps: int):
    """A rich progress bar on a terminal (plain lines otherwise), and a line at each evaluation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    state = {"train_loss": float("nan")}
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not console.is_terminal)
    task = bar.add_task("training", total=steps)

    def report(event: dict) -> None:
        state.update(event)
        bar.update(task, completed=event["step"], description=f"loss {state['train_loss']:.4f}")
        if "val_loss" in event:
            console.print(f"step {event['step']:>6}  train {state['train_loss']:.4f}  "
                          f"held-out {event['val_loss']:.4f}  best {event['best_val']:.4f}", highlight=False)

    with bar:
        yield report


TEXT = typer.Option(..., "--text", help="Training text file: the first 90% trains, the last 10% is held out.")
OUT = typer.Option(..., "-o", "--output", help="Run directory to write (a checkpoint plus log, plot and resume state).")

# The options `train` and `finetune` share, each command with its own defaults.
Steps = Annotated[int, typer.Option(help="Optimizer steps.")]
BatchSize = Annotated[int, typer.Option(help="Sequences per step (global, split over torchrun processes).")]
SeqLen = Annotated[int, typer.Option(help="Bytes per training sequence.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate.")]
MinLr = Annotated[float, typer.Option(help="Final learning rate of the cosine (-1 = lr / 10).")]
Warmup = Annotated[int, typer.Option(help="Linear warmup steps.")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay (matrices and embeddings only).")]
GradClip = Annotated[float, typer.Option(help="Gradient norm clip (0 = off).")]
Dropout = Annotated[float, typer.Option(help="Residual dropout during training.")]
Ema = Annotated[float, typer.Option(help="Decay of a moving average of the weights, which is evaluated and saved "
                                         "(0 = off; e.g. 0.99).")]
EvalEvery = Annotated[int, typer.Option(help="Steps between held-out evaluations (and checkpoints).")]
EvalWindows = Annotated[int, typer.Option(help="Held-out windows per evaluation (0 = all of the last 10%).")]
Seed = Annotated[int, typer.Option(help="Seed of the batches and dropout (and, for train, of the init).")]
TimeBudget = Annotated[float, typer.Option(help="Seconds; the run ends itself in time to evaluate and save (0 = none).")]
SaveDtype = Annotated[str, typer.Option(help="dtype of the saved best weights: float32, bfloat16 or float16.")]
Qat = Annotated[Optional[str], typer.Option(help="Quantization-aware training: int8 or int4.")]
QatGroupSize = Annotated[int, typer.Option(help="Block size of --qat int4 (32, 64 or 128).")]
QatHead = Annotated[bool, typer.Option("--qat-head/--qat-no-head",
                                       help="Fake-quantize LM head and embedding at int8 (the export default).")]
Resume = Annotated[Optional[Path], typer.Option(help="Continue an interrupted or finished run from its directory.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cuda or cpu.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")]
TRAIN_OPTIONS = ("steps", "batch_size", "seq_len", "lr", "min_lr", "warmup", "weight_decay", "grad_clip", "dropout", "ema",
                 "eval_every", "eval_windows", "seed", "time_budget", "save_dtype", "qat", "qat_group_size", "qat_head")


@app.command("train")
@user_errors
def train_cmd(
    text: Path = TEXT,
    config: str = typer.Option(..., "--config", help="Built-in model name, config.json, or checkpoint directory (its config)."),
    output: Path = OUT,
    steps: Steps = 5000,
    batch_size: BatchSize = 64,
    seq_len: SeqLen = 256,
    lr: Lr = 1e-3,
    min_lr: MinLr = -1.0,
    warmup: Warmup = 100,
    weight_decay: WeightDecay = 0.1,
    grad_clip: GradClip = 1.0,
    dropout: Dropout = 0.0,
    ema: Ema = 0.0,
    eval_every: EvalEvery = 250,
    eval_windows: EvalWindows = 0,
    seed: Seed = 0,
    time_budget: TimeBudget = 0.0,
    save_dtype: SaveDtype = "float32",
    qat: Qat = None,
    qat_group_size: QatGroupSize = 32,
    qat_head: QatHead = True,
    resume: Resume = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Train a model from scratch on a text file (byte-level)."""
    from edgelin.models.lm import LM

    cfg_kwargs = {k: v for k, v in locals().items() if k in TRAIN_OPTIONS}
    _train_config(**dict(cfg_kwargs))  # every bad option fails before the model is built
    model_config = replace(_resolve_config(config), seed=seed)  # the seed of every initial parameter, kept in config.json
    model = LM(model_config).init_weights()
    _run(model, text, output, force, resume, device, Path(config).name if Path(config).exists() else config, cfg_kwargs)


@app.command("finetune")
@user_errors
def finetune_cmd(
    checkpoint: str = typer.Argument(..., help="Checkpoint directory, or a built-in model that ships trained weights."),
    text: Path = TEXT,
    output: Path = OUT,
    steps: Steps = 1000,
    batch_size: BatchSize = 64,
    seq_len: SeqLen = 256,
    lr: Lr = 3e-4,
    min_lr: MinLr = -1.0,
    warmup: Warmup = 50,
    weight_decay: WeightDecay = 0.1,
    grad_clip: GradClip = 1.0,
    dropout: Dropout = 0.0,
    ema: Ema = 0.0,
    eval_every: EvalEvery = 100,
    eval_windows: EvalWindows = 0,
    seed: Seed = 0,
    time_budget: TimeBudget = 0.0,
    save_dtype: SaveDtype = "float32",
    qat: Qat = None,
    qat_group_size: QatGroupSize = 32,
    qat_head: QatHead = True,
    resume: Resume = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Fine-tune a trained checkpoint on a text file (optionally quantization-aware: --qat int8|int4)."""
    from edgelin.models.loading import load_model

    cfg_kwargs = {k: v for k, v in locals().items() if k in TRAIN_OPTIONS}
    _train_config(**dict(cfg_kwargs))
    loaded = load_model(checkpoint)
    if not loaded.trained:
        raise EdgelinError(f"{checkpoint} has no trained weights to fine-tune; use `edgelin train --config {checkpoint}`")
    _run(loaded.model.float(), text, output, force, resume, device, f"{loaded.name} finetune", cfg_kwargs)


INTO_HELP = "gla: gated linear attention alone; gla+swa: plus softmax attention over the last --window tokens."


@app.command("linearize")
@user_errors
def linearize_cmd(
    model: str = typer.Argument(..., help="Trained checkpoint (edgelin's, or Llama/Qwen/GPT-2/LFM2 layouts) with softmax attention."),
    text: Path = TEXT,
    output: Path = OUT,
    into: str = typer.Option("gla+swa", "--into", help=INTO_HELP),
    window: int = typer.Option(64, "--window", help="Tokens of the softmax branch of gla+swa."),
    feature_map: str = typer.Option("hedgehog", "--feature-map", help="hedgehog (learned softmax features, normalised like attention) or identity."),
    transfer_steps: int = typer.Option(200, "--transfer-steps", help="Steps of attention transfer (layer outputs fitted to the teacher's)."),
    transfer_lr: float = typer.Option(3e-3, "--transfer-lr", help="Peak learning rate of attention transfer."),
    transfer_batch_size: int = typer.Option(32, "--transfer-batch-size", help="Sequences per attention-transfer step."),
    distill: float = typer.Option(0.5, "--distill", help="Weight of the teacher's next-token distribution in fine-tuning (0 = plain loss)."),
    steps: Steps = 500,
    batch_size: BatchSize = 64,
    seq_len: SeqLen = 256,
    lr: Lr = 3e-4,
    min_lr: MinLr = -1.0,
    warmup: Warmup = 50,
    weight_decay: WeightDecay = 0.1,
    grad_clip: GradClip = 1.0,
    dropout: Dropout = 0.0,
    ema: Ema = 0.0,
    eval_every: EvalEvery = 100,
    eval_windows: EvalWindows = 0,
    seed: Seed = 0,
    time_budget: TimeBudget = 0.0,
    save_dtype: SaveDtype = "float32",
    resume: Resume = None,
    device: Device = "auto",
    force: Force = False,
) -> None:
    """Turn a pretrained softmax-attention model into a constant-memory recurrence: attention transfer, then fine-tuning.

    Every attention layer becomes gated linear attention built from its own q/k/v/o projections
    (optionally beside a sliding-window softmax branch); the result is an ordinary checkpoint for
    export, quantize, validate and bench.
    """
    import json

    import torch

    from edgelin.linearize import TransferConfig, attention_transfer, student_config, to_student
    from edgelin.models.checkpoint import load_checkpoint, save_checkpoint
    from edgelin.models.config import check_fits
    from edgelin.models.loading import load_model
    from edgelin.runtime.tokenizer import HFTokenizer
    from edgelin.train.data import ByteData
    from edgelin.train.loop import evaluate, train

    cfg_kwargs = {k: v for k, v in locals().items() if k in TRAIN_OPTIONS or k == "distill"}
    cfg = _train_config(**dict(cfg_kwargs), qat=None, qat_group_size=32, qat_head=True)
    transfer = TransferConfig(steps=transfer_steps, batch_size=transfer_batch_size, seq_len=seq_len, lr=transfer_lr, seed=seed)
    if device not in ("auto", "cpu", "cuda"):
        raise EdgelinError(f"--device must be auto, cpu or cuda, got {device!r}")
    loaded = load_model(model)
    if not loaded.trained:
        raise EdgelinError(f"{model} has no trained weights to linearize")
    teacher = loaded.model.float()
    student_cfg = student_config(teacher.config, into, window=window, feature_map=feature_map)
    check_fits(student_cfg)  # the student's options, checked before anything is written
    check_destination(output, what="run directory", force=force, folder=True)
    if resume is not None and not resume.is_dir():
        raise EdgelinError(f"--resume {resume}: no such run directory")
    encode = HFTokenizer(loaded.tokenizer_json).encode if loaded.tokenizer_json else None
    if encode is None and teacher.config.vocab_size != 256:
        raise EdgelinError(f"{model} has a vocabulary of {teacher.config.vocab_size} and no tokenizer.json to read the text with")
    data = ByteData.from_file(text, max(seq_len, transfer.seq_len), encode)
    main = _rank() == 0
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent)) if main else output.parent / f".{output.name}.rank{_rank()}"
    kept = resume / "transfer" if resume is not None and (resume / "transfer" / "model.safetensors").is_file() else None
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if main:
            (work / "command.txt").write_text(shlex.join(["edgelin", *sys.argv[1:]]) + "\n")
        teacher_loss = evaluate(teacher.to("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"), data, cfg)
        if kept is not None:
            student = load_checkpoint(kept).float()
            if main:
                shutil.copytree(kept, work / "transfer")
                shutil.copy(resume / "transfer_log.json", work / "transfer_log.json")
            note(f"attention transfer: kept from {kept}")
        else:
            student = to_student(teacher, student_cfg)
            console.print(f"linearizing {loaded.name} into {into}: layer pattern {student_cfg.pattern}, "
                          f"teacher held-out loss {teacher_loss:.4f}, run dir {work}")
            with _progress(transfer.steps) as report:
                log = attention_transfer(teacher, student, data, transfer, device=device,
                                         progress=(lambda e: report({"step": e["step"], "train_loss": e["loss"]})) if main else None)
            if main:
                save_checkpoint(student.float(), work / "transfer")
                (work / "transfer_log.json").write_text(json.dumps(log, indent=1) + "\n")
        after_transfer = evaluate(student, data, cfg)
        console.print(f"after attention transfer: held-out loss {after_transfer:.4f} (teacher {teacher_loss:.4f})")
        continued = resume if resume is not None and (resume / "last").is_dir() else None
        with _progress(cfg.steps) as report:
            result = train(student, data, cfg, work, resume=continued, device=device, title=f"{loaded.name} linearized ({into})",
                           progress=report if main else None, teacher=teacher if cfg.distill else None)
    except BaseException:
        if main:
            if (work / "transfer").is_dir():
                note(f"interrupted; the partial run is kept at {work} (continue with --resume {work})")
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if main:
        tokens = transfer.steps * transfer.batch_size * transfer.seq_len + result.steps_done * cfg.batch_size * cfg.seq_len
        summary = {"teacher": loaded.name, "into": into, "window": window if into == "gla+swa" else 0, "feature_map": feature_map,
                   "teacher_val_loss": teacher_loss, "after_transfer_val_loss": after_transfer,
                   "after_finetune_val_loss": result.best_val, "gap": result.best_val / teacher_loss - 1, "tokens": tokens}
        (work / "linearize.json").write_text(json.dumps(summary, indent=1) + "\n")
        _finish(work, output)
        console.print(f"held-out loss: teacher {teacher_loss:.4f}, after transfer {after_transfer:.4f}, "
                      f"after fine-tuning {result.best_val:.4f} ({100 * summary['gap']:+.2f}% of the teacher's) "
                      f"on {tokens:,} tokens; wrote [bold]{output}[/]")
