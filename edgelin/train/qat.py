"""Quantization-aware training: the export's own weight quantizers, applied as fake quantization.

Every quantized weight is replaced, in the forward pass, by `fake_quantize_weight` from
`edgelin.quantize.primitives`, the function that decides the integers of an exported package: the
model trains against exactly the dequantized weights it will ship with, and gradients pass straight
through to the float weights. Checkpoints keep the float weights; exporting them quantizes them to
the same integers.

What is quantized follows the export (`edgelin.quantize.qdq` with the default scheme fields):
every nn.Linear inside the blocks at the scheme's bits, except a 4-bit layer whose input size is
not a multiple of the group size, which falls back to int8 as the export does; and, with
`head=True` (the default), the LM head and the embedding table at int8 per row (the export's
default `lm_head` / `embedding` precision; tied weights are one matrix, quantized identically).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgelin.errors import EdgelinError
from edgelin.models.lm import LM
from edgelin.quantize.primitives import WeightQuant, dequantize_weight, fake_quantize_weight, quantize_weight

PARAM_INFIX = ".parametrizations.weight.original"


@dataclass(frozen=True)
class QATScheme:
    """`bits` 8 (per output channel, symmetric) or 4 (block-wise asymmetric, `group_size` 32/64/128)."""

    bits: int = 4
    group_size: int = 32
    head: bool = True  # LM head and embedding at int8, as the export's default scheme; False: left float

    def __post_init__(self) -> None:
        self.weight_quant  # validates bits / group_size with the export's own rules

    @property
    def weight_quant(self) -> WeightQuant:
        return WeightQuant(self.bits, self.group_size if self.bits == 4 else 0)

    @classmethod
    def parse(cls, name: str, group_size: int = 32, head: bool = True) -> "QATScheme":
        """"int8" or "int4" (the CLI's --qat) -> a scheme."""
        bits = {"int8": 8, "int4": 4}.get(name)
        if bits is None:
            raise EdgelinError(f"--qat must be int8 or int4, got {name!r}")
        return cls(bits, group_size if bits == 4 else 0, head)


class FakeQuantWeight(nn.Module):
    """A parametrization: weight -> dequantize(quantize(weight)), straight-through gradient."""

    def __init__(self, spec: WeightQuant):
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(w, self.spec)


def quantized_weights(model: LM, scheme: QATScheme) -> dict[str, tuple[nn.Module, WeightQuant]]:
    """Module name -> (module, how its `weight` is quantized), for the modules `scheme` quantizes."""
    spec, int8 = scheme.weight_quant, WeightQuant(8)
    chosen: dict[str, tuple[nn.Module, WeightQuant]] = {}
    for name, module in model.named_modules():
        if name in ("embed", "lm_head"):
            if scheme.head:
                chosen[name] = (module, int8)
        elif name.startswith("blocks.") and isinstance(module, nn.Linear):
            ok = spec.bits == 8 or module.in_features % spec.group_size == 0
            chosen[name] = (module, spec if ok else int8)
    return chosen


def prepare_qat(model: LM, scheme: QATScheme) -> list[str]:
    """Fake-quantize `scheme`'s weights of `model` in place; returns the names of the quantized layers."""
    if is_qat(model):
        raise EdgelinError("model is already prepared for QAT")
    layers = quantized_weights(model, scheme)
    for module, spec in layers.values():
        parametrize.register_parametrization(module, "weight", FakeQuantWeight(spec))
    return list(layers)


def is_qat(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float (master) weights under a plain LM's names, whether or not the model is QAT-prepared."""
    return {k.replace(PARAM_INFIX, ".weight"): v for k, v in model.state_dict().items()}


def plain_model(model: LM) -> LM:
    """`model` itself, or for a QAT-prepared model a plain LM (on the CPU) holding its float weights."""
    if not is_qat(model):
        return model
    plain = LM(model.config)
    plain.load_state_dict({k: v.detach().cpu() for k, v in plain_state_dict(model).items()})
    return plain


def load_plain_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a plain LM state dict into `model`, QAT-prepared or not (the float weights)."""
    names = {k.replace(PARAM_INFIX, ".weight"): k for k in model.state_dict()}
    model.load_state_dict({names[k]: v for k, v in state.items() if k in names}, strict=False)


@torch.no_grad()
def quantize_weights_(model: LM, scheme: QATScheme) -> list[str]:
    """Post-training quantization of a plain model in place: each weight becomes its dequantized int form.

    The same layers and the same integers as `prepare_qat` and the export; used to measure PTQ and
    the exported QAT model without building a package.
    """
    if is_qat(model):
        raise EdgelinError("quantize_weights_ takes a plain model; save or plain_model() a QAT model first")
    layers = quantized_weights(model, scheme)
    for module, spec in layers.values():  # a tied head and embedding: the same matrix, the same integers twice
        module.weight.copy_(dequantize_weight(*quantize_weight(module.weight, spec), spec).to(module.weight.dtype))
    return list(layers)
