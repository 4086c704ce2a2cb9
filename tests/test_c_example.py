"""examples/genai_c: an edgelin package run from C through ONNX Runtime GenAI's C API, built here
against the onnxruntime-genai wheel's library, gives edgelin's greedy tokens from a multi-token prompt."""
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgelin.exporters.package import export_package
from edgelin.runtime import Session, generate
from registry_helpers import zoo_model

og = pytest.importorskip("onnxruntime_genai")
ort = pytest.importorskip("onnxruntime")
EXAMPLE = Path(__file__).parents[1] / "examples" / "genai_c"
PROMPT = "ROMEO: wherefore art thou?"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """generate.c compiled against libonnxruntime-genai.so from the wheel, and the environment it runs in."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    genai_dir = Path(og.__file__).parent
    ort_lib = glob.glob(str(Path(ort.__file__).parent / "capi" / "libonnxruntime.so*"))
    if not (genai_dir / "libonnxruntime-genai.so").is_file() or not ort_lib:
        pytest.skip("the wheels carry no shared libraries for this platform")
    exe = tmp_path_factory.mktemp("c") / "generate"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(EXAMPLE / "generate.c"),
                    f"-I{EXAMPLE}", f"-L{genai_dir}", "-l:libonnxruntime-genai.so", f"-Wl,-rpath,{genai_dir}"],
                   check=True, capture_output=True, text=True)
    # onnxruntime-genai loads ONNX Runtime itself, from ORT_LIB_PATH
    return exe, {**os.environ, "ORT_LIB_PATH": ort_lib[0]}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return export_package(zoo_model("gla-tiny", 0.1), tmp_path_factory.mktemp("pkg") / "gla", prefill_tokens=8)


def test_c_program_gives_edgelin_greedy_tokens(program, package):
    exe, env = program
    out = subprocess.run([str(exe), str(package), PROMPT, "24", "--ids"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = [int(t) for t in out.stdout.split()]
    want = list(generate(Session(package, threads=2), list(PROMPT.encode()), 24, stop_ids={0}))
    assert len(want) > 4
    assert got[:len(want)] == want and got[len(want):] in ([], [0])  # ONNX Runtime GenAI yields its end token


def test_c_program_refuses_bad_input(program, package, tmp_path):
    exe, env = program
    usage = subprocess.run([str(exe), str(package), PROMPT], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
    count = subprocess.run([str(exe), str(package), PROMPT, "many"], env=env, capture_output=True, text=True)
    assert count.returncode == 2 and "MAX_NEW_TOKENS" in count.stderr
    missing = subprocess.run([str(exe), str(tmp_path / "none"), PROMPT, "4"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and len(missing.stderr.splitlines()) == 1
