"""Training: loss goes down, resume is exact, the best checkpoint loads, QAT rounds like the export, CLI errors."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgelin.cli import load_commands
from edgelin.models import LM, ZOO, load_checkpoint
from edgelin.quantize.primitives import WeightQuant, dequantize_weight, quantize_weight
from edgelin.train import ByteData, QATScheme, TrainConfig, evaluate, prepare_qat, quantize_weights_, train
from edgelin.train.qat import plain_model, quantized_weights

SEQ = 32
TINY = dataclasses.replace(ZOO["gla-tiny"], d_model=32, n_heads=2)
FAST = dict(batch_size=8, seq_len=SEQ, eval_every=10, eval_windows=8, log_every=5, lr=3e-3, warmup=5)


def fresh() -> LM:
    """The same starting model every time (init_weights leaves conv kernels to torch's global RNG)."""
    torch.manual_seed(0)
    return LM(TINY).init_weights()


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    line = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n"
    path.write_text(line * 60)
    return path


@pytest.fixture(scope="module")
def data(text):
    return ByteData.from_file(text, SEQ)


def interrupt_after_step_10_eval(event: dict) -> None:
    if event.get("step") == 10 and "val_loss" in event:
        raise KeyboardInterrupt


def test_split_is_first_90_last_10(data, text):
    raw = text.read_bytes()
    assert len(data.train) == int(len(raw) * 0.9) and bytes(data.train.tolist() + data.val.tolist()) == raw
    x, y = data.batch(4, SEQ, seed=0, step=3)
    assert x.shape == (4, SEQ) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, data.batch(4, SEQ, seed=0, step=3)[0]) and not torch.equal(x, data.batch(4, SEQ, seed=0, step=4)[0])


def test_training_reduces_loss_and_best_checkpoint_loads(data, tmp_path):
    model = fresh()
    before = evaluate(model, data, TrainConfig(**FAST))
    result = train(model, data, TrainConfig(steps=30, dropout=0.1, **FAST), tmp_path / "run")
    assert result.best_val < before - 0.5, (before, result.best_val)
    best = load_checkpoint(tmp_path / "run" / "best")
    assert evaluate(best, data, TrainConfig(**FAST)) == pytest.approx(result.best_val, abs=1e-5)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["train_step"] == list(range(1, 31)) and len(log["eval"]) == 3
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_resume_continues_exactly(data, tmp_path):
    cfg = TrainConfig(steps=20, dropout=0.1, **FAST)
    full = train(fresh(), data, cfg, tmp_path / "full")
    # Interrupted right after the step-10 evaluation (which wrote last/), then resumed to step 20.
    with pytest.raises(KeyboardInterrupt):
        train(fresh(), data, cfg, tmp_path / "part", progress=interrupt_after_step_10_eval)
    resumed = train(fresh(), data, cfg, tmp_path / "resumed", resume=tmp_path / "part")
    assert resumed.log["train_step"] == full.log["train_step"]
    assert resumed.log["train_loss"][10:] == full.log["train_loss"][10:]  # bit-identical, steps 11..20
    assert resumed.best_val == full.best_val


def test_ema_is_what_is_evaluated_and_saved_and_resumes_exactly(data, tmp_path):
    cfg = TrainConfig(steps=20, dropout=0.1, ema=0.9, **FAST)
    full = train(fresh(), data, cfg, tmp_path / "full")
    last = tmp_path / "full" / "last"
    average = load_file(str(last / "ema.safetensors"))
    raw = load_checkpoint(last).state_dict()
    assert all(not torch.equal(average[k], raw[k]) for k in average)  # last/ keeps the raw weights to resume
    # the final evaluation scored the average: evaluate it independently
    averaged = fresh()
    with torch.no_grad():
        for name, tensor in average.items():  # by parameter: the tied head shares the embedding's
            averaged.get_parameter(name).copy_(tensor)
    assert evaluate(averaged, data, TrainConfig(**FAST)) == pytest.approx(full.log["eval"][-1]["val_loss"], abs=1e-5)
    best = load_checkpoint(tmp_path / "full" / "best")
    assert evaluate(best, data, TrainConfig(**FAST)) == pytest.approx(full.best_val, abs=1e-5)

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), data, cfg, tmp_path / "part", progress=interrupt_after_step_10_eval)
    resumed = train(fresh(), data, cfg, tmp_path / "resumed", resume=tmp_path / "part")
    assert resumed.log["eval"][-1]["val_loss"] == full.log["eval"][-1]["val_loss"]
    resumed_average = load_file(str(tmp_path / "resumed" / "last" / "ema.safetensors"))
    assert all(torch.equal(resumed_average[k], average[k]) for k in average)


def test_qat_fake_quant_is_the_export_quantizer(data, tmp_path):
    scheme = QATScheme.parse("int4", 32)
    model = LM(ZOO["gla-tiny"]).init_weights()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    specs = {n: s for n, (_, s) in quantized_weights(model, scheme).items()}
    names = prepare_qat(model, scheme)
    modules = dict(model.named_modules())
    for name in names:
        expected = dequantize_weight(*quantize_weight(plain[f"{name}.weight"], specs[name]), specs[name])
        assert torch.equal(modules[name].weight, expected), name
    # 4-bit where the group fits, int8 where it does not (GLA's rank-16 gate), int8 head and embedding
    assert specs["blocks.0.mixer.q_proj"] == WeightQuant(4, 32)
    assert specs["blocks.0.mixer.gk_proj.1"] == WeightQuant(8) and specs["lm_head"] == specs["embed"] == WeightQuant(8)
    assert torch.equal(plain_model(model).state_dict()["blocks.0.mixer.q_proj.weight"], plain["blocks.0.mixer.q_proj.weight"])

    # Training moves the float weights (straight-through gradients) and saves them, not the rounded ones;
    # quantizing the saved checkpoint as the export does gives back the QAT model's forward exactly.
    qat = LM(ZOO["gla-tiny"]).init_weights()
    qat.load_state_dict(plain)
    train(qat, data, TrainConfig(steps=6, qat=scheme, **FAST), tmp_path / "qat")
    saved = load_checkpoint(tmp_path / "qat" / "best")
    assert set(saved.state_dict()) == set(plain)
    assert not torch.equal(saved.blocks[0].mixer.q_proj.weight, plain["blocks.0.mixer.q_proj.weight"])
    quantize_weights_(saved, scheme)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(qat.eval()(x)[0], saved(x)[0])


runner = CliRunner()


def cli(*args):
    return runner.invoke(load_commands(), [str(a) for a in args])


def test_cli_train_then_finetune_qat(text, tmp_path):
    small = tmp_path / "tiny.json"
    TINY.save(small)
    opts = ["--steps", 4, "--batch-size", 4, "--seq-len", SEQ, "--eval-every", 2, "--eval-windows", 4, "--device", "cpu"]
    result = cli("train", "--text", text, "--config", small, "-o", tmp_path / "run", *opts)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert {"config.json", "model.safetensors", "train_log.json", "loss.png", "command.txt", "last"} <= {p.name for p in run.iterdir()}
    load_checkpoint(run)
    result = cli("finetune", run, "--text", text, "-o", tmp_path / "ft", "--qat", "int8", *opts)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ft" / "train_log.json").read_text())["train_config"]["qat"]["bits"] == 8
    result = cli("train", "--text", text, "--config", small, "-o", tmp_path / "more", "--resume", run, *opts[:-2])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, fragment", [
    (["train", "--text", "{missing}", "--config", "gla-tiny"], "no such text file"),
    (["train", "--text", "{text}", "--config", "no-such-model"], "neither a config.json"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--qat", "int3"], "--qat must be int8 or int4"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--qat", "int4", "--qat-group-size", "48"], "group_size"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--lr", "-1"], "--lr must be > 0"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--lr", "inf"], "--lr must be a finite number"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--min-lr", "0.1"], "--min-lr 0.1 is above --lr"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--steps", "-5"], "--steps must be >= 1"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--dropout", "1"], "--dropout must be in [0, 1)"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["finetune", "gla-tiny", "--text", "{text}", "--eval-windows", "-1"], "--eval-windows must be >= 0"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--seq-len", "100000"], "too short"),
    (["train", "--text", "{text}", "--config", "gla-tiny", "--resume", "{tmp}"], "nothing to resume"),
    (["finetune", "gla-tiny", "--text", "{text}"], "no trained weights"),
    (["finetune", "{tmp}/nope", "--text", "{text}"], "no such model directory"),
])
def test_cli_errors_one_line_and_nothing_left(text, tmp_path, args, fragment):
    args = [a.format(text=text, missing=tmp_path / "missing.txt", tmp=tmp_path) for a in args]
    result = cli(*args, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.output
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


def test_torchrun_ddp_two_processes(text, tmp_path):
    """Two CPU processes (gloo) under torchrun: one run directory, written by rank 0, world size 2."""
    edgelin = Path(sys.executable).with_name("edgelin")
    if not edgelin.exists() or shutil.which("torchrun", path=str(edgelin.parent)) is None:
        pytest.skip("needs the installed edgelin and torchrun commands")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(edgelin.with_name("torchrun")), "--nproc_per_node", "2", "--master_port", "29531", "--no-python",
           str(edgelin), "train", "--text", str(text), "--config", "gla-tiny", "-o", str(tmp_path / "ddp"),
           "--steps", "4", "--batch-size", "4", "--seq-len", str(SEQ), "--eval-every", "2", "--eval-windows", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    log = json.loads((tmp_path / "ddp" / "train_log.json").read_text())
    assert log["world_size"] == 2 and len(log["eval"]) == 2
    load_checkpoint(tmp_path / "ddp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
