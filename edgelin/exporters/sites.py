"""The torch side of the sites record (edgelin/sites.py): which weights a model declares, and where
each one lands in a traced graph.

A module declares its weights by what it is: an `nn.Linear` is a linear layer (`lm_head` the LM
head), an `nn.Embedding` an embedding table, an `RMSNorm` a norm scale. A module whose weights are
used otherwise (an Einsum, a batched MatMul) declares them with `quant_weights() -> {attribute:
output-channel axis}`. To find a weight in the graph without trusting the tracer's names, every
declared parameter holds unique random values while the graph is traced (its fingerprint); each
initializer whose bytes are a fingerprint, as stored or transposed, is that parameter, and gets
its real values back.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgelin.errors import EdgelinError
from edgelin.models.layers.norm import GatedRMSNorm, RMSNorm
from edgelin.sites import PRODUCT_OPS, GraphSites, WeightSite, weight_readers


@dataclass(frozen=True)
class DeclaredWeight:
    name: str
    kind: str  # "linear", "lm_head", "embedding"
    param: nn.Parameter
    axis: int  # output-channel axis in the parameter's own layout


def declared_weights(model: nn.Module) -> list[DeclaredWeight]:
    """Every quantizable weight of `model`, named after its module."""
    out = []
    for fqn, module in model.named_modules():
        custom = getattr(module, "quant_weights", None)
        if callable(custom):
            out.extend(DeclaredWeight(f"{fqn}.{attr}", "linear", getattr(module, attr), axis) for attr, axis in custom().items())
        elif isinstance(module, nn.Embedding):
            out.append(DeclaredWeight(fqn, "embedding", module.weight, 0))
        elif isinstance(module, nn.Linear):
            out.append(DeclaredWeight(fqn, "lm_head" if fqn == "lm_head" else "linear", module.weight, 0))
    return out


def declared_norms(model: nn.Module) -> dict[str, nn.Parameter]:
    """Plain RMSNorm scales (the gated output norms multiply by a gate after the scale: no smoothing site)."""
    return {fqn: m.weight for fqn, m in model.named_modules() if isinstance(m, RMSNorm) and not isinstance(m, GatedRMSNorm)}


def _digest(a: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest()


class Fingerprints:
    """Unique random values in a model's declared parameters while it is traced, and their real values."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = list({id(p): p for p in params}.values())
        self.index = {id(p): i for i, p in enumerate(self.params)}
        self.real = [p.detach().float().numpy().copy() for p in self.params]
        gen = torch.Generator().manual_seed(0x5eed)
        self.prints: dict[bytes, tuple[int, bool]] = {}
        self.values = []
        for i, p in enumerate(self.params):
            v = torch.randn(p.shape, generator=gen) * 0.02
            self.values.append(v)
            self.prints[_digest(v.numpy())] = (i, False)
            if v.ndim == 2:
                self.prints.setdefault(_digest(v.numpy().T), (i, True))
        if len(self.prints) < sum(1 + (p.ndim == 2) for p in self.params):
            raise EdgelinError("internal: two weight fingerprints collided")  # vanishingly unlikely

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        with torch.no_grad():
            for p, v in zip(self.params, self.values):
                p.copy_(v)
            try:
                yield
            finally:
                for p, r in zip(self.params, self.real):
                    p.copy_(torch.from_numpy(r))

    def restore(self, proto: onnx.ModelProto) -> dict[int, list[tuple[str, bool]]]:
        """Put the real values into every fingerprinted initializer of `proto`.

        Returns: parameter index -> [(initializer name, stored transposed)].
        """
        found: dict[int, list[tuple[str, bool]]] = {}
        for t in proto.graph.initializer:
            if t.data_type != onnx.TensorProto.FLOAT:
                continue
            a = numpy_helper.to_array(t)
            hit = self.prints.get(_digest(a))
            if hit is None:
                continue
            i, transposed = hit
            real = self.real[i].T if transposed else self.real[i]
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(real).reshape(a.shape), t.name))
            found.setdefault(i, []).append((t.name, transposed))
        return found


def record_sites(proto: onnx.ModelProto, graph: str, weights: list[DeclaredWeight], norms: dict[str, nn.Parameter],
                prints: Fingerprints, found: dict[int, list[tuple[str, bool]]], blocks: dict[str, str]) -> GraphSites:
    """The sites record of one traced graph (after `prints.restore`)."""

    def read_by(name: str) -> set[str]:
        return {n.op_type for n, _ in weight_readers(proto, name)}

    sites: dict[str, WeightSite] = {}
    for w in weights:
        candidates = found.get(prints.index[id(w.param)], [])
        if w.kind == "embedding":
            hits = [(n, tr) for n, tr in candidates if not tr and "Gather" in read_by(n)]
        else:  # a matrix product reads it; MatMul's [K, N] (transposed) first
            hits = sorted(((n, tr) for n, tr in candidates if read_by(n) & set(PRODUCT_OPS)), key=lambda h: not h[1])
        if not hits:
            raise EdgelinError(f"declared weight {w.name} is not read as a weight in the traced {graph} graph "
                               f"(a module that uses its weight otherwise must declare it with quant_weights())")
        name, transposed = hits[0]
        axis = (w.param.ndim - 1 - w.axis) if transposed else w.axis
        sites[w.name] = WeightSite(w.name, w.kind, name, axis)
    norm_inits = {}
    for fqn, param in norms.items():
        hits = [n for n, tr in found.get(prints.index[id(param)], []) if not tr and "Mul" in read_by(n)]
        if hits:
            norm_inits[fqn] = hits[0]
    return GraphSites(sites, norm_inits, blocks)
