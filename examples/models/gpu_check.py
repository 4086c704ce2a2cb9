"""GPU check before training: model-level loss and gradients of the Triton dispatch and of the torch
chunked reference, both under bf16 autocast, each against the fp32 reference (no autocast); step times.

A Triton error close to the reference's own bf16 error means the kernels add nothing beyond bf16 rounding."""
import time

import torch
import torch.nn.functional as F

import edgelin.kernels.dispatch as dispatch
from edgelin.models import LM, ZOO

print("torch", torch.__version__, "cuda", torch.cuda.get_device_name(0))
real = dispatch._use_triton
torch.backends.cuda.matmul.allow_tf32 = False


def loss_fn(model, x, bf16):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = model(x[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())


for name in ["gla-10m", "hybrid-10m"]:
    torch.manual_seed(0)
    model = LM(ZOO[name]).init_weights().cuda()
    x = torch.randint(0, 256, (64, 257), device="cuda")
    res = {}
    for mode, triton, bf16 in [("triton-bf16", True, True), ("ref-bf16", False, True), ("ref-fp32", False, False)]:
        dispatch._use_triton = real if triton else (lambda t: False)
        model.zero_grad()
        loss = loss_fn(model, x, bf16)
        loss.backward()
        res[mode] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
        for _ in range(3):
            loss_fn(model, x, bf16).backward()
        torch.cuda.synchronize()
        t = time.time()
        for _ in range(10):
            loss_fn(model, x, bf16).backward()
        torch.cuda.synchronize()
        print(f"{name} {mode}: loss {res[mode][0]:.5f}  fwd+bwd {1000 * (time.time() - t) / 10:.1f} ms/step (B64 T256)")
    ref_loss, ref_grads = res["ref-fp32"]
    for mode in ["triton-bf16", "ref-bf16"]:
        errs = {n: ((res[mode][1][n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in ref_grads.items()}
        worst = max(errs, key=errs.get)
        print(f"{name} {mode} vs fp32: |loss diff| {abs(res[mode][0] - ref_loss):.2e}, "
              f"worst grad rel err {errs[worst]:.2e} ({worst}), median {sorted(errs.values())[len(errs) // 2]:.2e}")
dispatch._use_triton = real
