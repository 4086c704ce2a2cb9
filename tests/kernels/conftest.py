import os

import pytest
import torch

# Triton kernels run in the interpreter on machines without a GPU; this must be set before any
# kernel module is imported (the flag is read when @triton.jit runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
# one config per kernel: the tests check results, not speed, and compile less
os.environ.setdefault("EDGELIN_NO_AUTOTUNE", "1")


def _patch_interpreter_index():
    """Triton 3.6's interpreter turns a scalar into an int with int(array of shape (1,)), which
    numpy >= 2.4 refuses; a loop like `for i in range(NT)` with a run-time NT then fails."""
    try:
        import triton.runtime.interpreter as interp
    except ImportError:
        return
    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_edgelin_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._edgelin_patched = True
    interp._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter_index()


@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"
