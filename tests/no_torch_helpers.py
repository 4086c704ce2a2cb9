"""Running a script in a fresh interpreter where `import torch` fails (the runtime must stay torch-free)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = r"""
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")

sys.meta_path.insert(0, BlockTorch())
"""


def run_without_torch(script: str, *args: str, timeout: int = 120) -> str:
    """Run `script` (after the block, with `args` as sys.argv[1:]); assert it succeeded and left torch unloaded; its stdout."""
    check = '\nassert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was loaded"\n'
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH + script + check, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
