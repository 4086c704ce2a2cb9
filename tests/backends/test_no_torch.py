"""The OpenVINO and TVM back ends run with torch made unimportable (edgelin.runtime stays torch-free)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")

sys.meta_path.insert(0, BlockTorch())
from edgelin.runtime import Session, generate
for backend in ("openvino", "openvino-stateful", "tvm"):
    assert len(list(generate(Session(sys.argv[1], backend=backend, threads=1), [72, 105], 4))) == 4
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok")
"""


def test_backends_without_torch(fp_packages):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(fp_packages["gla-tiny"])], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("ok")
