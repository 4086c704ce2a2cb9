"""Tiny zoo models exported once per test run and compiled for every back end.

Under pytest-xdist the workers share one build (a file lock in the run's base temp directory),
so the OpenVINO and TVM compiles happen once however the test files are spread.
"""
import shutil
import warnings

import pytest
from filelock import FileLock

from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO

MODELS = ["gla-tiny", "hybrid-tiny"]
PREFILL = 16


def build_packages(root):
    from edgelin.exporters.openvino import export_openvino
    from edgelin.exporters.tvm import export_tvm

    made = {}
    for name in MODELS:
        out = root / name
        if not (out / "manifest.json").exists():
            export_package(LM(ZOO[name]).init_weights(), out, prefill_tokens=PREFILL, force=True)
            export_openvino(out)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_tvm(out)
        made[name] = out
    return made


@pytest.fixture(scope="session")
def fp_packages(tmp_path_factory, worker_id):
    """name -> FP32 package with ONNX, OpenVINO (stateless + stateful) and TVM (this CPU) graphs. Read only."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install apache-tvm)")
    if worker_id == "master":
        return build_packages(tmp_path_factory.mktemp("backends"))
    shared = tmp_path_factory.getbasetemp().parent / "edgelin-backends"
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        if not (shared / "done").exists():
            build_packages(shared)
            (shared / "done").touch()
    return build_packages(shared)


@pytest.fixture
def fresh_copy(tmp_path):
    """A private, writable copy of a package."""
    def copy(pkg):
        return shutil.copytree(pkg, tmp_path / pkg.name)
    return copy
