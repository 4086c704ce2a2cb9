import os

import pytest
import torch

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(42)
