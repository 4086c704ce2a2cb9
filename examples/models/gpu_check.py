"""GPU check before training: model-level loss and gradients, Triton dispatch vs the torch reference (bf16 autocast), step times."""
import time, torch, torch.nn.functional as F
import edgelin.kernels.dispatch as dispatch
from edgelin.models import LM, ZOO
print("torch", torch.__version__, "cuda", torch.cuda.get_device_name(0))
import triton; print("triton", triton.__version__)
real = dispatch._use_triton
torch.backends.cuda.matmul.allow_tf32 = True
for name in ["gla-10m", "hybrid-10m"]:
    torch.manual_seed(0)
    model = LM(ZOO[name]).init_weights().cuda()
    x = torch.randint(0, 256, (64, 257), device="cuda")
    res = {}
    for mode in ["triton", "ref"]:
        dispatch._use_triton = real if mode == "triton" else (lambda t: False)
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        res[mode] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                l = F.cross_entropy(model(x[:, :-1])[0].float().flatten(0, 1), x[:, 1:].flatten())
            l.backward()
        torch.cuda.synchronize(); t = time.time()
        for _ in range(10):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                l = F.cross_entropy(model(x[:, :-1])[0].float().flatten(0, 1), x[:, 1:].flatten())
            l.backward()
        torch.cuda.synchronize()
        print(f"{name} {mode}: loss {res[mode][0]:.5f}  fwd+bwd {1000*(time.time()-t)/10:.1f} ms/step (B64 T256)")
    worst = max(((res['triton'][1][n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in res['ref'][1].items())
    print(f"{name}: |loss diff| {abs(res['triton'][0]-res['ref'][0]):.2e}, worst grad rel err {worst:.2e}")
dispatch._use_triton = real
