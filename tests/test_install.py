"""Installs as users install: a wheel built from this tree, runtime-only in a fresh virtual
environment (no torch), and whole outside the source tree, where its zoo finds the trained weights."""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO
from edgelin.models import zoo

ROOT = Path(__file__).resolve().parents[1]
# The shipped sample (tinyshakespeare's opening, part of gla-10m's training text): it tells a trained
# model from a random init, which scores ln 256 on any text; CI's clean checkout has no ../shared.
SAMPLE_TEXT = ROOT / "edgelin" / "data" / "calibration.txt"


def check_run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", timeout=600, **kwargs)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of this tree: setuptools leaves build/ and egg-info beside the sources it builds."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "tree"
    shutil.copytree(ROOT / "edgelin", tree / "edgelin", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    check_run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", tree)
    return next((root / "dist").glob("edgelin-*.whl"))


def test_runtime_only_install_generates_without_torch(wheel, tmp_path):
    venv = tmp_path / "venv"
    check_run(sys.executable, "-m", "venv", venv)
    check_run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel)  # numpy, onnx, onnxruntime, typer, rich
    check_run(venv / "bin" / "python", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")
    pkg = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "pkg", prefill_tokens=8)
    args = ["generate", pkg, "--prompt", "ROMEO:", "--max-new-tokens", "5", "--seed", "0"]
    installed = check_run(venv / "bin" / "edgelin", *args, cwd=tmp_path)
    source = check_run(sys.executable, "-m", "edgelin", *args, cwd=tmp_path)
    assert installed.stdout == source.stdout and installed.stdout.strip()
    assert "decode" in check_run(venv / "bin" / "edgelin", "inspect", pkg, cwd=tmp_path).stdout
    bench = check_run(venv / "bin" / "edgelin", "bench", pkg, "--decode-tokens", "2", cwd=tmp_path).stdout
    assert "decode tok/s" in bench and "torch eager" not in bench  # no torch here: no baseline column
    version = check_run(venv / "bin" / "python", "-m", "edgelin", "--version", cwd=tmp_path)
    assert version.stdout.startswith("edgelin ")

    export = subprocess.run([venv / "bin" / "edgelin", "export", "gla-tiny", "-o", tmp_path / "x"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    lines = (export.stdout + export.stderr).strip().splitlines()
    assert export.returncode == 2 and len(lines) == 1, export.stdout + export.stderr
    assert lines[0].startswith("error: edgelin export needs torch") and "pip install 'edgelin[export]'" in lines[0]
    assert not (tmp_path / "x").exists()


TRAINED_CHECK = """
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import edgelin
from edgelin.models.loading import load_model
from edgelin.models.zoo import shipped_checkpoint

site, text = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).read_bytes()
assert Path(edgelin.__file__).resolve().is_relative_to(site), edgelin.__file__
path = shipped_checkpoint("gla-10m")
assert path.resolve().is_relative_to(site), path
loaded = load_model(None)  # the built-in default, as `edgelin export` takes it
assert (loaded.name, loaded.trained) == ("gla-10m", True)
state = loaded.model.state_dict()
for name, tensor in load_file(str(path / "model.safetensors")).items():
    assert torch.equal(state[name], tensor.float()), name
ids = torch.tensor(list(text[-257:])).unsqueeze(0)
with torch.no_grad():
    logits, _ = loaded.model(ids[:, :-1], None)
print(F.cross_entropy(logits[0], ids[0, 1:]).item())
"""


def test_installed_wheel_finds_the_trained_weights(wheel, tmp_path):
    site = tmp_path / "site"
    check_run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel)
    r = check_run(sys.executable, "-c", TRAINED_CHECK, site, SAMPLE_TEXT, cwd=tmp_path,
                  env={**os.environ, "PYTHONPATH": str(site)})
    loss = float(r.stdout.strip().splitlines()[-1])
    assert loss < 2.5 < math.log(256), loss  # trained: about 1.5 nats/byte; a random init: ln 256 = 5.55


def test_a_missing_extra_is_one_line(tmp_path):
    """As in a runtime-only install: `import torch` fails with ModuleNotFoundError."""
    block = "import sys; sys.modules['torch'] = None\nfrom edgelin.cli import main\nmain()"
    r = subprocess.run([sys.executable, "-c", block, "export", "gla-tiny", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: edgelin export needs torch, which is not installed: pip install 'edgelin[export]' "
        "(CPU only: first pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"]


def test_only_the_trained_names_have_weights():
    assert set(zoo.TRAINED) <= set(ZOO) and zoo.DEFAULT_MODEL in zoo.TRAINED
    assert [name for name in ZOO if zoo.shipped_checkpoint(name)] == [name for name in ZOO if name in zoo.TRAINED]
    assert zoo.shipped_checkpoint("gla-130m") is None and zoo.shipped_checkpoint("gla-tiny") is None


def test_a_trained_model_without_its_weights_is_an_error(tmp_path, monkeypatch):
    broken = tmp_path / "trained" / "gla-10m"
    broken.mkdir(parents=True)
    shutil.copy(zoo.shipped_checkpoint("gla-10m") / "config.json", broken)
    monkeypatch.setattr(zoo, "TRAINED_DIR", tmp_path / "trained")
    for model in (["gla-10m"], []):  # by name, and as the built-in default
        assert_user_error(run("export", *model, "--int8", "-o", tmp_path / "out"),
                          "the trained weights of gla-10m are missing", "model.safetensors not found")
        assert not (tmp_path / "out").exists()
