"""The student of a linearization: the teacher with each softmax attention layer made `lin_attn`."""
from __future__ import annotations

from dataclasses import replace

import torch

from edgelin.errors import EdgelinError
from edgelin.models.config import LMConfig
from edgelin.models.lm import LM

INTO = ("gla", "gla+swa")
DROPPED_OPTIONS = ("window", "full_attention")  # the teacher's KV length means nothing to the student


def converted_layers(config: LMConfig, mixer: str = "swa") -> list[int]:
    """Indexes of the attention layers a linearization replaces (every `swa` layer; of the student: `lin_attn`)."""
    return [i for i in range(config.n_layers) if config.mixer(i) == mixer]


def student_config(teacher: LMConfig, into: str, *, window: int = 64, feature_map: str = "hedgehog") -> LMConfig:
    """`teacher` with "swa" -> "lin_attn" in its pattern; lin_attn takes the attention options
    (heads, rotary, norms, biases) and adds the branch window (0 for `gla`) and the feature map."""
    if into not in INTO:
        raise EdgelinError(f"--into must be one of {', '.join(INTO)}, got {into!r}")
    if not converted_layers(teacher):
        raise EdgelinError(f"the model has no softmax attention layer to linearize (its layers: {', '.join(sorted(set(teacher.pattern)))})")
    if into == "gla+swa" and window < 1:
        raise EdgelinError(f"--window must be >= 1 for gla+swa, got {window}")
    attention = {k: v for k, v in teacher.mixers.get("swa", {}).items() if k not in DROPPED_OPTIONS}
    options = {**attention, "window": window if into == "gla+swa" else 0, "feature_map": feature_map}
    mixers = {k: v for k, v in teacher.mixers.items() if k != "swa"}
    return replace(teacher, pattern=["lin_attn" if p == "swa" else p for p in teacher.pattern],
                   mixers={**mixers, "lin_attn": options})


def to_student(teacher: LM, config: LMConfig) -> LM:
    """A new LM of `config` holding every teacher weight (attention projections and norms included);
    only the linear branches' own parameters (decay gate, feature map, norm, mix) start fresh."""
    student = LM(config)  # lin_attn layers start their linear branches at reset_linear_branch's point
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)  # copies into the student's own tensors
    new = {name for name, _ in student.named_parameters() if ".mixer." in name and _is_linear_branch(name)}
    if unexpected or set(missing) - new:
        raise EdgelinError(f"linearize: teacher and student weights do not line up (missing {sorted(set(missing) - new)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]})")
    return student.to(next(teacher.parameters()).dtype)


def _is_linear_branch(name: str) -> bool:
    return any(part in name for part in (".mixer.gk_proj.", ".mixer.hedgehog", ".mixer.lin_norm.")) or name.endswith(".mixer.mix")


def transfer_parameters(student: LM) -> list[torch.nn.Parameter]:
    """What attention transfer trains: every parameter of the linearized layers (projections, decay
    gates, feature maps, norms, mix); the rest of the model stays the teacher's."""
    return [p for i in converted_layers(student.config, "lin_attn") for p in student.blocks[i].mixer.parameters()]
