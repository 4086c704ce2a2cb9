"""`edgelin linearize` end to end on a tiny teacher: a checkpoint that exports, resumes, and refuses bad input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import run
from edgelin.models.checkpoint import load_checkpoint, save_checkpoint
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM

TINY = ["--transfer-steps", "3", "--transfer-batch-size", "2", "--steps", "4", "--batch-size", "2", "--seq-len", "32",
        "--eval-every", "2", "--eval-windows", "2", "--warmup", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    config = LMConfig(d_model=32, n_layers=2, n_heads=2, pattern=["short_conv", "swa"],
                      mixers={"swa": {"window": 64, "full_attention": True, "n_kv_heads": 1}})
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_checkpoint(LM(config).init_weights(), path)
    return path


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 30)
    return path


@pytest.fixture(scope="module")
def student(teacher, text, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "student"
    result = run("linearize", teacher, "--text", text, "-o", out, "--into", "gla+swa", "--window", "8", *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_result_is_an_ordinary_checkpoint(student):
    model = load_checkpoint(student)
    assert model.config.pattern == ["short_conv", "lin_attn"]
    assert model.config.mixers["lin_attn"]["window"] == 8 and model.config.mixers["lin_attn"]["n_kv_heads"] == 1
    summary = json.loads((student / "linearize.json").read_text())
    assert summary["into"] == "gla+swa" and summary["tokens"] == 3 * 2 * 32 + 4 * 2 * 32
    for key in ("teacher_val_loss", "after_transfer_val_loss", "after_finetune_val_loss"):
        assert np.isfinite(summary[key])
    log = json.loads((student / "transfer_log.json").read_text())
    assert log["layers"] == [1] and len(log["loss"]) >= 1


def test_exported_student_runs_like_torch(student, tmp_path):
    from edgelin.exporters.package import export_package
    from edgelin.runtime import Session

    model = load_checkpoint(student).eval()
    package = export_package(model, tmp_path / "pkg", prefill_tokens=8)
    session = Session(package, threads=1)
    ids = torch.randint(0, 256, (1, 21))
    logits, _ = session.forward(ids.numpy(), session.new_state(1))
    with torch.no_grad():
        expected, _ = model(ids)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


def test_resume_keeps_the_transfer_and_continues(student, teacher, text, tmp_path):
    out = tmp_path / "more"
    more = [a if a != "4" else "6" for a in TINY]  # --steps 6
    result = run("linearize", teacher, "--text", text, "-o", out, "--into", "gla+swa", "--window", "8", "--resume", student, *more)
    assert result.exit_code == 0, result.output
    assert "kept from" in result.output
    assert json.loads((out / "train_log.json").read_text())["steps_done"] == 6
    assert (student / "last").is_dir()  # the run resumed from is left as it was


def test_pure_gla(teacher, text, tmp_path):
    result = run("linearize", teacher, "--text", text, "-o", tmp_path / "gla", "--into", "gla", "--feature-map", "identity", *TINY)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "gla").config.mixers["lin_attn"]["window"] == 0


def test_torchrun_two_processes(teacher, text, tmp_path):
    """Attention transfer and fine-tuning over two CPU processes (gloo): one run directory from rank 0."""
    edgelin = Path(sys.executable).with_name("edgelin")
    if not edgelin.exists() or shutil.which("torchrun", path=str(edgelin.parent)) is None:
        pytest.skip("needs the installed edgelin and torchrun commands")
    cmd = [str(edgelin.with_name("torchrun")), "--nproc_per_node", "2", "--master_port", "29532", "--no-python", str(edgelin),
           "linearize", str(teacher), "--text", str(text), "-o", str(tmp_path / "ddp"), "--into", "gla", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "ddp" / "train_log.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
