"""Models: configs, token mixers, the LM, checkpoints and the built-in zoo."""
from edgelin.models.checkpoint import load_checkpoint, save_checkpoint
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM
from edgelin.models.zoo import DEFAULT_MODEL, ZOO, zoo_config

__all__ = ["LM", "LMConfig", "ZOO", "DEFAULT_MODEL", "load_checkpoint", "save_checkpoint", "zoo_config"]
