"""Built-in models by name: shapes with seeded init, and the trained models whose weights ship in the package."""
from __future__ import annotations

from pathlib import Path

from edgelin.errors import EdgelinError
from edgelin.models.config import LMConfig

ZOO: dict[str, LMConfig] = {
    # Tiny models, one per family, for tests and quick trials.
    "gla-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["gla"], mixers={"gla": {"use_short_conv": True}}),
    "gated-delta-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["gated_delta"]),
    "mamba2-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, d_ff=-1, pattern=["mamba2"], mixers={"mamba2": {"head_dim": 16, "state_size": 16}}),
    "retention-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["retention"]),
    "mamba-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, d_ff=-1, pattern=["mamba"], mixers={"mamba": {"state_size": 8}}),
    "delta-net-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["delta_net"]),
    "mlstm-tiny": LMConfig(d_model=64, n_layers=2, n_heads=2, pattern=["mlstm"], logit_soft_cap=30.0),
    "lin-attn-tiny": LMConfig(  # what `edgelin linearize --into gla+swa` makes of an attention layer
        d_model=64, n_layers=2, n_heads=2, pattern=["short_conv", "lin_attn"],
        mixers={"lin_attn": {"window": 8, "feature_map": "hedgehog", "n_kv_heads": 1}},
    ),
    "hybrid-tiny": LMConfig(
        d_model=64, n_layers=4, n_heads=2, pattern=["short_conv", "gla", "short_conv", "swa"], mixers={"swa": {"window": 16}}
    ),
    # ~0.9M parameters, trained on this CPU in 12 minutes (edgelin/models/trained/gla-1m).
    "gla-1m": LMConfig(d_model=128, n_layers=4, n_heads=2, pattern=["gla"], mixers={"gla": {"use_short_conv": True}}),
    # ~10M-parameter byte-level models, the shapes of the trained reference models.
    "gla-10m": LMConfig(
        d_model=288, n_layers=10, n_heads=4, pattern=["gla"], mixers={"gla": {"use_short_conv": True, "expand_k": 1.0}}
    ),
    "hybrid-10m": LMConfig(
        d_model=384, n_layers=6, n_heads=6, pattern=["short_conv", "gated_delta", "swa"], mixers={"swa": {"window": 128}}
    ),
    # ~130M parameters, the size of Mamba2-130M: speed and memory work.
    "gla-130m": LMConfig(d_model=768, n_layers=16, n_heads=6, pattern=["gla"], mixers={"gla": {"use_short_conv": True, "expand_k": 1.0}}),
}


def zoo_config(name: str) -> LMConfig:
    if name not in ZOO:
        raise EdgelinError(f"unknown model {name!r}: not a directory and not a built-in model ({', '.join(ZOO)})")
    return ZOO[name]


# Names whose trained weights ship inside the package (trained/NAME: config.json, model.safetensors
# and how they were trained). Every other name is a shape whose weights are a seeded random init.
TRAINED = ("gla-1m", "gla-10m", "hybrid-10m")
TRAINED_DIR = Path(__file__).resolve().parent / "trained"


def shipped_checkpoint(name: str) -> Path | None:
    """The checkpoint directory of a trained zoo name; None for a name that is only a shape.

    Raises EdgelinError when a trained name's files are missing, rather than letting its random
    init pass for the trained model.
    """
    if name not in TRAINED:
        return None
    path = TRAINED_DIR / name
    for file in ("config.json", "model.safetensors"):
        if not (path / file).is_file():
            raise EdgelinError(f"the trained weights of {name} are missing: {path / file} not found; reinstall edgelin")
    return path


DEFAULT_MODEL = "gla-10m"
