"""Speed and accuracy of the chunked kernels on one GPU: edgelin vs fla vs torch SDPA (flash, causal).

    python benchmarks/kernels.py --json out/kernels.json           # the speed table
    python benchmarks/kernels.py --check                           # bf16 accuracy vs the fp32 recurrence
    python benchmarks/kernels.py --profile                         # per-kernel time, one shape
    python benchmarks/kernels.py --speed --check --profile         # all three, one process (check first)

bf16, H=16, head dim 128; forward (no grad) and forward+backward milliseconds from
triton.testing.do_bench (median). fla is optional: its columns are blank where it is not importable,
and for the mLSTM, which fla does not have (its bf16 accuracy: tests/kernels/test_triton_bf16_cuda.py).
fla 0.6.0 refuses its gated delta backward on Hopper with Triton 3.4-3.7.0 (its issue #640: wrong
results); `--lift-fla-guard` times that backward anyway, for speed only, and marks the row.
"""

import argparse
import json
import platform

import torch
import torch.nn.functional as F
import triton

from edgelin.kernels.gated_delta.triton_chunk import chunk_gated_delta_rule
from edgelin.kernels.gla.triton_chunk import chunk_gla
from edgelin.kernels.mlstm.triton_chunk import chunk_mlstm

SHAPES = [(4, 2048), (2, 4096), (1, 16384)]
NO_FLA = False
LIFT_FLA_GUARD = False
H, D = 16, 128
OURS = {"gla": chunk_gla, "gated_delta": chunk_gated_delta_rule, "mlstm": chunk_mlstm}


def fla_ops():
    if NO_FLA:
        return None
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdn
        from fla.ops.gla import chunk_gla as fla_gla
    except Exception as e:  # noqa: BLE001 - any import failure means "no fla column"
        print(f"fla not importable: {e!r}")
        return None
    if LIFT_FLA_GUARD:
        import fla.ops.common.chunk_o as chunk_o

        chunk_o.TRITON_ABOVE_3_7_1 = True  # the guard's only switch; the kernel itself is unchanged
    return {"gla": fla_gla, "gated_delta": fla_gdn}


def make_inputs(op, B, T, H=H, dtype=torch.bfloat16, device="cuda", seed=0, gate_norm=16.0):
    gen = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    if op == "gla":
        g = F.logsigmoid(rnd(B, T, H, D)) / gate_norm
        return [x.to(dtype) for x in (q, k, v)] + [g]
    if op == "mlstm":
        return [x.to(dtype) for x in (q, k, v)] + [rnd(B, T, H), F.logsigmoid(rnd(B, T, H) + 2)]
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    g = F.logsigmoid(rnd(B, T, H))
    beta = rnd(B, T, H).sigmoid()
    return [x.to(dtype) for x in (q, k, v)] + [g, beta]


def bench(fn, inputs, backward):
    if not backward:
        with torch.no_grad():
            return triton.testing.do_bench(lambda: fn(*inputs))
    leaves = [x.detach().requires_grad_() for x in inputs]
    o = fn(*leaves)
    do = torch.randn_like(o)

    def step():
        fn(*leaves).backward(do)

    return triton.testing.do_bench(step, grad_to_none=leaves)


def run_speed(args):
    fla = fla_ops()
    rows, sdpa_ms = [], {}
    for B, T in SHAPES:
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            sdpa_ms[B, T] = {"sdpa_fwd_ms": bench(sdpa, [q, k, v], False),
                             "sdpa_fwdbwd_ms": bench(sdpa, [q, k, v], True)}
    for op in OURS:  # op by op, so a run cut short has whole ops
        for B, T in SHAPES:
            inputs = make_inputs(op, B, T)
            fns = {"edgelin": lambda *x, f=OURS[op]: f(*x)[0]}
            if fla is not None and op in fla:
                fns["fla"] = lambda *x, f=fla[op]: f(*x)[0]
            row = {"op": op, "B": B, "T": T, "H": H, "D": D, "fla_fwd_ms": None, "fla_fwdbwd_ms": None,
                   "fla_guard_lifted": LIFT_FLA_GUARD and op == "gated_delta"}
            for name, fn in fns.items():
                for bwd in (False, True):
                    key = f"{name}_{'fwdbwd' if bwd else 'fwd'}_ms"
                    try:
                        row[key] = bench(fn, inputs, bwd)
                    except Exception as e:  # noqa: BLE001 - record and go on
                        row[key] = None
                        print(f"{op} B{B} T{T} {name} bwd={bwd}: {e!r}"[:400])
            row.update(sdpa_ms[B, T])
            rows.append(row)
            print(row, flush=True)
            if args.json:  # after every row, so a run cut short still leaves what it measured
                write_json(args.json, rows)

    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print("\n| op | shape | edgelin fwd | fla fwd | sdpa fwd | edgelin fwd+bwd | fla fwd+bwd | sdpa fwd+bwd "
          "| fwd+bwd edgelin/fla |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "-"
        if r["fla_fwdbwd_ms"] and r["edgelin_fwdbwd_ms"]:
            ratio = f"{r['edgelin_fwdbwd_ms'] / r['fla_fwdbwd_ms']:.2f}"
        print(f"| {r['op']} | B{r['B']} T{r['T']} | {fmt(r['edgelin_fwd_ms'])} | {fmt(r['fla_fwd_ms'])} | "
              f"{fmt(r['sdpa_fwd_ms'])} | {fmt(r['edgelin_fwdbwd_ms'])} | {fmt(r['fla_fwdbwd_ms'])} | "
              f"{fmt(r['sdpa_fwdbwd_ms'])} | {ratio}{' (fla guard lifted)' if r['fla_guard_lifted'] else ''} |")


def write_json(path, rows):
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "dtype": "bfloat16", "H": H, "D": D}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def rms_ratio(ref, out):
    ref, out = ref.double(), out.double()
    return ((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-12)).item()


def run_check(args):
    """bf16 kernels (edgelin, and fla for comparison) vs the float32 step-by-step reference."""
    from edgelin.kernels.gated_delta.reference import naive_recurrent_gated_delta_rule
    from edgelin.kernels.gla.reference import naive_recurrent_gla

    fla = fla_ops()
    refs = {"gla": naive_recurrent_gla, "gated_delta": naive_recurrent_gated_delta_rule}
    worst = 0.0
    for op in ("gla", "gated_delta"):
        for B, T, Hc, gate_norm in ((2, 1000, 16, 1.0), (1, 777, 16, 0.1), (1, 1500, 16, 16.0)):
            x = make_inputs(op, B, T, H=Hc, gate_norm=gate_norm, seed=B * T)
            h0 = torch.randn(B, Hc, D, D, device="cuda")
            do = torch.randn(B, T, Hc, D, device="cuda", dtype=torch.bfloat16)
            dht = torch.randn(B, Hc, D, D, device="cuda")
            results = {}
            fns = {"ref": refs[op], "edgelin": OURS[op]}
            if fla is not None:
                fns["fla"] = fla[op]
            for name, fn in fns.items():
                leaves = [(t.float() if name == "ref" else t).detach().clone().requires_grad_() for t in x]
                s0 = h0.clone().requires_grad_()
                try:
                    o, ht = fn(*leaves, initial_state=s0, output_final_state=True)
                    ((o.float() * do.float()).sum() + (ht * dht).sum()).backward()
                except Exception as e:  # noqa: BLE001
                    print(f"{op} {name}: {e!r}"[:300])
                    continue
                results[name] = [o, ht] + [t.grad for t in leaves] + [s0.grad]
            names = ["o", "ht", "dq", "dk", "dv", "dg"] + (["dbeta"] if op == "gated_delta" else []) + ["dh0"]
            for name in ("edgelin", "fla"):
                if name not in results:
                    continue
                ratios = {n: rms_ratio(r, x) for n, r, x in zip(names, results["ref"], results[name])}
                if name == "edgelin":
                    worst = max(worst, max(ratios.values()))
                print(f"{op} B{B} T{T} H{Hc} gate_norm={gate_norm} {name:8s} "
                      + " ".join(f"{n}={v:.1e}" for n, v in ratios.items()), flush=True)
    print(f"worst edgelin rms ratio vs fp32 reference: {worst:.2e}")


def run_profile(args):
    from torch.profiler import ProfilerActivity, profile

    fla = fla_ops()
    B, T = 4, 2048
    for op in OURS:
        inputs = make_inputs(op, B, T)
        fns = {"edgelin": OURS[op]}
        if fla is not None and op in fla:
            fns["fla"] = fla[op]
        for name, fn in fns.items():
            leaves = [x.detach().requires_grad_() for x in inputs]
            do = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                fn(*leaves)[0].backward(do)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn(*leaves)[0].backward(do)
                torch.cuda.synchronize()
            print(f"--- {op} {name} B{B} T{T}: CUDA time per fwd+bwd, by kernel")
            for ev in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:14]:
                print(f"{ev.device_time_total / 5 / 1000:8.3f} ms  {ev.key[:90]}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the speed table here")
    p.add_argument("--check", action="store_true", help="accuracy vs the fp32 reference")
    p.add_argument("--profile", action="store_true", help="per-kernel CUDA time at B4 T2048")
    p.add_argument("--speed", action="store_true", help="the speed table (the default when nothing else is asked)")
    p.add_argument("--no-fla", action="store_true", help="leave fla out (its autotuning compiles for minutes)")
    p.add_argument("--lift-fla-guard", action="store_true",
                   help="time fla's gated delta backward where fla refuses it (speed only: its results are wrong there)")
    a = p.parse_args()
    NO_FLA, LIFT_FLA_GUARD = a.no_fla, a.lift_fla_guard
    torch.backends.cuda.matmul.allow_tf32 = True
    if a.check:
        run_check(a)
    if a.speed or a.json or not (a.check or a.profile):
        run_speed(a)
    if a.profile:
        run_profile(a)
