import os

import pytest
import torch

# Triton reads TRITON_INTERPRET once, on first use (fla's import in tests/importers can be that),
# so the CPU interpreter must be chosen here, before any test module imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(42)
