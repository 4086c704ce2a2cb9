"""One config builds one model: every parameter, not only those init_weights draws, follows config.seed."""
from dataclasses import replace

import pytest
import torch

from edgelin.models import LM, ZOO, LMConfig
from edgelin.models.zoo import shipped_checkpoint

TINY = [name for name in ZOO if name.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
def test_same_config_same_weights(name):
    torch.manual_seed(123)  # the global generator's state must not matter
    a = LM(ZOO[name]).init_weights().state_dict()
    torch.manual_seed(456)
    b = LM(ZOO[name]).init_weights().state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seed_changes_weights():
    cfg = ZOO["hybrid-tiny"]
    a, b = LM(cfg).state_dict(), LM(replace(cfg, seed=cfg.seed + 1)).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if "conv" in k)


@pytest.mark.parametrize("name", [name for name in ZOO if shipped_checkpoint(name)])
def test_zoo_config_is_the_shipped_models_shape(name):
    """A zoo name with shipped weights builds the shape of those weights (the seed aside)."""
    shipped = LMConfig.load(shipped_checkpoint(name) / "config.json")
    assert replace(shipped, seed=0) == replace(ZOO[name], seed=0)
