"""GPTQ (Frantar et al. 2023) for 4-bit block-wise weights, in the same integer format as RTN.

Columns (input channels) are quantized left to right; each column's rounding error is spread over
the columns not yet quantized, weighted by the inverse Hessian H = 2 X^T X / n of the layer's
calibration inputs. A block's scale and zero point are chosen by the RTN formula of
`edgelin.quantize.primitives` on the block's weights as they stand when the loop reaches it, so the
result dequantizes with the same `dequantize_weight` as RTN.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from edgelin.quantize.primitives import WeightQuant, quantize_weight
from edgelin.runtime.package import read_package
from edgelin.sites import activation_inputs, graph_sites

DAMP = 0.01
BLOCK = 128


def collect_hessians(fp_dir: str | Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Layer name -> H = 2 X^T X / n over `ids` [B, T] streamed through the prefill graph (states carried)."""
    from edgelin.calibration.probe import Probe

    root = Path(fp_dir)
    m = read_package(root)
    proto = onnx.load(str(root / m.graphs["prefill"].file), load_external_data=False)
    inputs: dict[str, list[str]] = {}
    for site in graph_sites(m.raw, "prefill").linears():
        for _, act in activation_inputs(proto, site):
            inputs.setdefault(act, []).append(site.name)
    acc: dict[str, np.ndarray] = {}
    rows = [0]

    def accumulate(_graph: str, _feeds: dict, out: dict[str, np.ndarray]) -> None:
        rows[0] += ids.shape[0] * m.graphs["prefill"].tokens
        for t in inputs:
            x = out[t].reshape(-1, out[t].shape[-1]).astype(np.float64)
            acc[t] = acc.get(t, 0) + x.T @ x

    Probe(root, extra={"prefill": inputs}).prefill_stream(ids, accumulate)
    return {layer: 2 * acc[t] / max(rows[0], 1) for t, layers in inputs.items() if t in acc for layer in layers}


@torch.no_grad()
def gptq_quantize(w: np.ndarray, hessian: np.ndarray, spec: WeightQuant) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ-quantize `w` [out, in] (torch layout) with `hessian` [in, in]; returns (q, scale, zero) like
    `quantize_weight_np` (q uint8 0..15 [out, in], scale float32 and zero int32 [out, in / G])."""
    W = torch.tensor(w, dtype=torch.float64)
    H = torch.tensor(hessian, dtype=torch.float64).clone()
    K, G = W.shape[1], spec.group_size
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += DAMP * torch.mean(torch.diag(H)) * torch.eye(K, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(W.shape, dtype=torch.uint8)
    scales, zeros = [], []
    block = max(G, BLOCK)  # lazy batch updates: the error reaches later blocks once per block
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1, Hb = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        E1 = torch.zeros_like(W1)
        for j in range(b1 - b0):
            if (b0 + j) % G == 0:
                _, s, z = quantize_weight(W1[:, j:j + G].float(), spec)  # the RTN formula on the current block
                scale, zero = s[:, 0].double(), z[:, 0].double()
                scales.append(s[:, 0])
                zeros.append(z[:, 0])
            col = W1[:, j]
            q = torch.clamp(torch.round((col.float() / scale.float()).double()) + zero, 0, 15)
            err = (col - (q - zero) * scale) / Hb[j, j]
            W1[:, j + 1:] -= err[:, None] * Hb[j, j + 1:][None, :]
            E1[:, j] = err
            Q[:, b0 + j] = q.to(torch.uint8)
        W[:, b1:] -= E1 @ Hinv[b0:b1, b1:]
    return Q.numpy(), torch.stack(scales, 1).numpy(), torch.stack(zeros, 1).numpy()
