"""edgelin.runtime imports and generates with torch made unimportable."""

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
try:
    import torch  # noqa: F401
    raise SystemExit("torch imported despite the block")
except ImportError:
    pass

from edgelin.runtime import ByteTokenizer, SamplingConfig, Session, generate, generate_text
s = Session(sys.argv[1], threads=1)
ids = list(generate(s, [104, 105, 33, 32, 104], 8, SamplingConfig(0.8, top_k=10), seed=0))
text = "".join(generate_text(s, ByteTokenizer(), "hi", 4))
assert len(ids) == 8 and not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("ok", ids)
"""


def test_runtime_without_torch(toy_package):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(toy_package)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok ")
