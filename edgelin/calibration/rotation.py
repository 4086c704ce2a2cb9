"""Hadamard rotation of the residual stream (QuaRot-style), applied to the torch model before export.

With every RMSNorm weight folded into the linear layers that read it, RMSNorm commutes with an
orthogonal Q, so the residual stream can live in a rotated basis x Q: the embedding becomes E Q,
every layer reading the stream W Q, every layer writing it Q^T W, the head W Q. The FP function
is unchanged; outlier channels are spread over all channels, which quantizes better.

Q = diag(random signs) (H_{2^k} / sqrt(2^k)) kron R_m for d = 2^k * m with m odd (R_m a random
orthogonal m x m; m = 1 for powers of two). Readers and writers are found by tracing one forward
pass; the rotated model is checked against the original and refused if they differ.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgelin.errors import EdgelinError
from edgelin.models.lm import LM


def rotation_matrix(d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = (d & -d)  # largest power of two dividing d
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < k:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    h /= k ** 0.5
    m = d // k
    r = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))[0] if m > 1 else torch.ones(1, 1, dtype=torch.float64)
    signs = torch.randint(0, 2, (d,), generator=gen).double() * 2 - 1
    return signs[:, None] * torch.kron(h.contiguous(), r.contiguous())


def _trace(block: nn.Module, x: torch.Tensor, state) -> tuple[list[nn.Linear], list[nn.Linear], list[nn.Linear]]:
    """Linears reading mixer_norm's output, reading mlp_norm's output, writing the residual stream."""
    seen: dict[str, list] = {"in": [], "out": []}
    hooks = []
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    def record(mod, inp, out) -> None:  # a hook that returns something would replace the output
        seen["in"].append((mod, inp[0]))
        seen["out"].append((mod, out))

    for lin in linears:
        hooks.append(lin.register_forward_hook(record))
    norm_out: dict[str, torch.Tensor] = {}
    for name in ("mixer_norm", "mlp_norm"):
        norm = getattr(block, name)
        if norm is not None:
            hooks.append(norm.register_forward_hook(lambda mod, inp, out, name=name: norm_out.__setitem__(name, out) or None))
    mix_out: list[torch.Tensor] = []
    hooks.append(block.mixer.register_forward_hook(lambda mod, inp, out: mix_out.append(out[0]) or None))
    try:
        block(x, state)
    finally:
        for h in hooks:
            h.remove()
    reads = {k: [m for m, t in seen["in"] if t is v] for k, v in norm_out.items()}
    writers = [m for m, t in seen["out"] if mix_out and t is mix_out[0]]
    if block.mlp is not None:
        writers.append(block.mlp.down_proj)
    return reads.get("mixer_norm", []), reads.get("mlp_norm", []), writers


@torch.no_grad()
def rotate_model(model: LM, seed: int = 0) -> LM:
    """A rotated copy of `model` with the same function (checked); `model` is not modified."""
    if model.config.norm != "rms":
        raise EdgelinError(f"--rotate needs RMSNorm blocks; this model's are {model.config.norm!r} norms, "
                           "which do not commute with a rotation of the residual stream")
    rot = copy.deepcopy(model).eval()
    d = rot.config.d_model
    Q = rotation_matrix(d, seed)
    if rot.lm_head.weight is rot.embed.weight:
        rot.lm_head.weight = nn.Parameter(rot.embed.weight.detach().clone())
    ids = torch.randint(0, rot.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(seed))
    x = rot.embed(ids)
    state = rot.init_state(1)
    plan = []
    for block, s in zip(rot.blocks, state):
        plan.append(_trace(block, x, s))
        x, _ = block(x, s)
    for block, (mix_readers, mlp_readers, writers) in zip(rot.blocks, plan):
        if not mix_readers or len(writers) < 1 + (block.mlp is not None):
            raise EdgelinError(f"--rotate: cannot trace the linear layers of mixer {type(block.mixer).__name__}")
        for norm, readers in ((block.mixer_norm, mix_readers), (block.mlp_norm, mlp_readers)):
            if norm is None:
                continue
            g = norm.weight.double()
            for lin in readers:
                lin.weight.copy_((lin.weight.double() * g * 1.0) @ Q)
            norm.weight.fill_(1.0)
        for lin in writers:
            lin.weight.copy_(Q.T @ lin.weight.double())
            if lin.bias is not None:
                lin.bias.copy_(Q.T @ lin.bias.double())
    rot.lm_head.weight.copy_((rot.lm_head.weight.double() * rot.norm.weight.double()) @ Q)
    rot.norm.weight.fill_(1.0)
    rot.embed.weight.copy_(rot.embed.weight.double() @ Q)
    if rot.pos_embed is not None:  # learned positions enter the residual stream beside the embedding
        rot.pos_embed.weight.copy_(rot.pos_embed.weight.double() @ Q)
    rot.config = copy.deepcopy(rot.config)
    rot.config.tie_embeddings = False
    ref, _ = model.eval()(ids)
    got, _ = rot(ids)
    err = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    if err > 1e-3:
        raise EdgelinError(f"--rotate changed the model's output (relative error {err:.2e}); "
                           "a mixer reads the residual stream other than through linear layers")
    return rot
