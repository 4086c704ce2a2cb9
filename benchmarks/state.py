"""The recurrent state as a product (issue 16): prefix-cache TTFT, batched decoding, speculative decoding, the server.

    .venv/bin/python benchmarks/state.py [--models gla-10m gla-130m] [--threads 2] [--reps 5]
        [--text ../shared/data/tinyshakespeare.txt] [--out out/state-bench] [--json out/state-bench/results.json]

Packages are built once with the CLI, `edgelin export MODEL --int8 -o OUT/MODEL-int8` (gla-1m too: the
draft model), and reused. Text is the last 10% of --text (held out from training and calibration).
Each ratio is measured interleaved (A B A B ...) in one process; every figure is a median over --reps.

  ttft     time to the first token of a 2,048-token prefix + a --question-token question, the prefix
           cached (PrefixCache) vs prefilled; a new question each time, so only the prefix can be reused
  batch    aggregate greedy decode tokens/s of BatchDecoder with 4 streams vs 1 (--steps steps each)
  verify   the cost of one verify pass (the package's verify graph: K decode steps in one run) against
           one decode step, and against one decode step of K sequences (the batch-K bound), interleaved
  spec     tokens/s of speculative vs plain greedy decoding of --spec-tokens tokens after 256-token
           held-out prompts (the prompt's prefill is not timed), prompt lookup and gla-1m drafting,
           "auto" (the default policy) and "always" (verify every round with K - 1 drafts); "lookup
           3-gram" drafts only from matches of 3 or more tokens (PromptLookupDrafter(6, 3)); is the
           output identical?
  server   edgelin's server on 127.0.0.1 (uvicorn, in this process): request latency p50/p99 and
           generated tokens/s with 1, 4 and 8 concurrent clients, --server-tokens tokens per request
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgelin.runtime import (  # noqa: E402
    BatchDecoder, ModelDrafter, PrefixCache, PromptLookupDrafter, Session, generate, prefill, speculative_generate,
)

PREFIX = 2048


def build(model: str, out: Path, log) -> Path:
    """OUT/NAME-int8 (NAME: the built-in model's name or the checkpoint folder's), exported with the CLI
    unless it is there."""
    pkg = out / f"{Path(model).name}-int8"
    if not (pkg / "manifest.json").exists():
        log(f"exporting {model} --int8 to {pkg} ...")
        subprocess.run([sys.executable, "-m", "edgelin", "export", model, "--int8", "-o", str(pkg), "--force"],
                       check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    return pkg


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def bench_ttft(session: Session, text: np.ndarray, reps: int, question: int) -> dict[str, Any]:
    prefix = text[:PREFIX]
    cache = PrefixCache(session, 1 << 30)
    prefill(session, prefix, cache)  # the shared prefix, cached once (a system prompt, a document)
    times: dict[str, list[float]] = {"prefill": [], "cached": []}
    same = True
    for r in range(reps):
        q = text[PREFIX + 500 * r:PREFIX + 500 * r + question]
        first = {}
        for mode in ("prefill", "cached") if r % 2 == 0 else ("cached", "prefill"):
            start = time.perf_counter()
            job = prefill(session, np.concatenate([prefix, q]), cache if mode == "cached" else None)
            first[mode] = int(job.logits.argmax())
            times[mode].append(time.perf_counter() - start)
            assert job.reused == (PREFIX if mode == "cached" else 0)
        same &= first["prefill"] == first["cached"]
    return {"prefix_tokens": PREFIX, "question_tokens": question, "prefill_s": median(times["prefill"]),
            "cached_s": median(times["cached"]), "speedup": median(times["prefill"]) / median(times["cached"]),
            "same_first_token": same, "all_s": times}


def bench_batch(session: Session, text: np.ndarray, reps: int, steps: int) -> dict[str, Any]:
    starts = [prefill(session, text[3000 + 700 * i:3000 + 700 * i + 64]) for i in range(4)]
    rates: dict[int, list[float]] = {1: [], 4: []}
    for r in range(reps):
        for b in (1, 4) if r % 2 == 0 else (4, 1):
            dec = BatchDecoder(session, 4)
            tokens = {dec.add(s.state): int(s.logits.argmax()) for s in starts[:b]}
            start = time.perf_counter()
            for _ in range(steps):
                tokens = {slot: int(row.argmax()) for slot, row in dec.step(tokens).items()}
            rates[b].append(b * steps / (time.perf_counter() - start))
    return {"steps": steps, "tok_s_1": median(rates[1]), "tok_s_4": median(rates[4]),
            "speedup": median(rates[4]) / median(rates[1]), "all_tok_s": rates}


def bench_verify(session: Session, reps: int) -> dict[str, Any]:
    """Seconds per run of the decode graph (1 and K sequences) and of the verify graph (K tokens), interleaved."""
    K = session.verify_tokens
    if not K:
        return {"verify_tokens": 0}
    one, many = session.new_state(1), session.new_state(K)
    runs = {"decode": lambda: session.run_graph("decode", np.zeros((1, 1), np.int64), one),
            f"decode_batch_{K}": lambda: session.run_graph("decode", np.zeros((K, 1), np.int64), many),
            "verify": lambda: session.verify(np.zeros((1, K), np.int64), one)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(max(20, 10 * reps)):
        for name, run in (runs.items() if r % 2 == 0 else reversed(list(runs.items()))):
            start = time.perf_counter()
            for _ in range(5):
                run()
            times[name].append((time.perf_counter() - start) / 5)
    t = {name: median(v) for name, v in times.items()}
    return {"verify_tokens": K, "decode_s": t["decode"], "decode_batch_s": t[f"decode_batch_{K}"], "verify_s": t["verify"],
            "verify_in_decode_steps": t["verify"] / t["decode"], "batch_in_decode_steps": t[f"decode_batch_{K}"] / t["decode"]}


def bench_spec(session: Session, draft: tuple[str, Session] | None, text: np.ndarray, prompts: int,
               tokens: int) -> dict[str, Any]:
    # (drafter, policy, most drafts per pass (None: K - 1))
    variants = {"lookup auto": (PromptLookupDrafter, "auto", None), "lookup always": (PromptLookupDrafter, "always", None),
                "lookup 3-gram always": (lambda: PromptLookupDrafter(6, 3), "always", None)}
    if draft is not None:
        name, drafter = draft
        variants |= {f"{name} auto": (lambda: ModelDrafter(drafter), "auto", None),
                     f"{name} always": (lambda: ModelDrafter(drafter), "always", None)}
    order = ["plain", *variants]
    rates: dict[str, list[float]] = {name: [] for name in order}
    same: dict[str, list[bool]] = {name: [] for name in variants}
    kept: dict[str, list[float]] = {name: [] for name in variants}
    passes: dict[str, list[int]] = {name: [] for name in variants}
    for i in range(prompts):
        prompt, outs = text[6000 + 4000 * i:6000 + 4000 * i + 256], {}
        before = prefill(session, prompt[:-1]).state  # decoding is timed, not the prompt's prefill
        for name in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            if name == "plain":
                outs[name] = list(generate(session, prompt[-1:], tokens, state=before))
            else:
                make, mode, most = variants[name]
                g = speculative_generate(session, make(), prompt[-1:], tokens, state=before, speculate=mode,
                                         context=prompt[:-1], max_draft=most)
                outs[name] = list(g)
                kept[name].append(g.stats.accepted / max(g.stats.passes, 1))
                passes[name].append(g.stats.passes)
            rates[name].append(tokens / (time.perf_counter() - start))
        for name in variants:
            same[name].append(outs[name] == outs["plain"])
    plain = median(rates["plain"])
    result: dict[str, Any] = {"tokens": tokens, "prompts": prompts, "plain_tok_s": plain}
    for name in variants:
        result[name] = {"tok_s": median(rates[name]), "speedup": median(rates[name]) / plain,
                        "identical": f"{sum(same[name])}/{len(same[name])}", "kept_per_pass": median(kept[name]),
                        "passes": median(passes[name])}
    return result


def post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    doc = json.loads(r.read())
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {doc}")
    return doc


def bench_server(package: Path, threads: int, text: bytes, per_client: int, tokens: int) -> dict[str, Any]:
    import uvicorn

    from edgelin.runtime import load_tokenizer
    from edgelin.serve import Engine, EngineConfig
    from edgelin.serve.app import Server

    session = Session(package, threads=threads, check_finite=False)
    engine = Engine(session, load_tokenizer(package, session.manifest), EngineConfig(max_batch=8))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Server(engine, "bench", on_shutdown=engine.close).app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    prompts = [text[9000 + 300 * i:9000 + 300 * i + 64].decode("ascii", "replace") for i in range(8 * per_client)]
    post(port, {"model": "bench", "prompt": prompts[0], "max_tokens": 4, "temperature": 0})  # warm up
    result = {"tokens_per_request": tokens, "requests_per_client": per_client}
    for clients in (1, 4, 8):
        latencies: list[float] = []

        def client(i: int) -> int:
            made = 0
            for j in range(per_client):
                start = time.perf_counter()
                doc = post(port, {"model": "bench", "prompt": prompts[i * per_client + j], "max_tokens": tokens,
                                  "temperature": 0})
                latencies.append(time.perf_counter() - start)
                made += doc["usage"]["completion_tokens"]
            return made

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            made = sum(pool.map(client, range(clients)))
        wall = time.perf_counter() - start
        result[f"clients_{clients}"] = {"p50_s": float(np.percentile(latencies, 50)),
                                        "p99_s": float(np.percentile(latencies, 99)), "tok_s": made / wall,
                                        "requests": len(latencies)}
    server.should_exit = True
    thread.join(30)
    return result


def table(model: str, r: dict[str, Any]):
    from rich.table import Table

    t = Table(title=f"{model} INT8, {r['threads']} threads (load {r['load_before']:.1f} -> {r['load_after']:.1f})")
    t.add_column("measurement")
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    t.add_column("B / A", justify="right")
    t.add_column("notes")
    if "ttft" in r:
        tt = r["ttft"]
        t.add_row(f"TTFT, {tt['prefix_tokens']}-token prefix + {tt['question_tokens']}-token question: prefilled / "
                  "cached", f"{tt['prefill_s'] * 1e3:.0f} ms", f"{tt['cached_s'] * 1e3:.1f} ms",
                  f"{tt['speedup']:.1f}x faster", f"same first token: {tt['same_first_token']}")
    if "batch" in r:
        b = r["batch"]
        t.add_row("decode tok/s: 1 stream / 4 streams (aggregate)", f"{b['tok_s_1']:.0f}", f"{b['tok_s_4']:.0f}",
                  f"{b['speedup']:.2f}x", f"{b['steps']} steps")
    v = r.get("verify") or {}
    if v.get("verify_tokens"):
        t.add_row(f"one pass, K = {v['verify_tokens']}: decode step / verify pass", f"{v['decode_s'] * 1e3:.2f} ms",
                  f"{v['verify_s'] * 1e3:.2f} ms", f"{v['verify_in_decode_steps']:.2f}x",
                  f"a decode step of {v['verify_tokens']} sequences: {v['decode_batch_s'] * 1e3:.2f} ms "
                  f"({v['batch_in_decode_steps']:.2f}x)")
    s = r.get("spec") or {}
    for name in [k for k in s if isinstance(s[k], dict)]:
        v = s[name]
        t.add_row(f"greedy tok/s: plain / speculative {name}", f"{s['plain_tok_s']:.0f}", f"{v['tok_s']:.0f}",
                  f"{v['speedup']:.2f}x", f"identical {v['identical']}, {v['passes']:.0f} passes / {s['tokens']} "
                  f"tokens, {v['kept_per_pass']:.1f} drafts kept per pass")
    sv = r.get("server")
    for c in (1, 4, 8) if sv else ():
        v = sv[f"clients_{c}"]
        t.add_row(f"server, {c} client{'s' if c > 1 else ''}: latency p50 / p99", f"{v['p50_s'] * 1e3:.0f} ms",
                  f"{v['p99_s'] * 1e3:.0f} ms", "", f"{v['tok_s']:.0f} tok/s generated, {v['requests']} requests of "
                  f"{sv['tokens_per_request']} tokens")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gla-10m", "gla-130m"])
    ap.add_argument("--draft", default="gla-1m", help="Draft model (speculative decoding), exported the same way.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--question", type=int, default=16, help="Tokens after the cached prefix (the TTFT question).")
    ap.add_argument("--steps", type=int, default=64, help="Decode steps per batched run.")
    ap.add_argument("--spec-tokens", type=int, default=256)
    ap.add_argument("--server-requests", type=int, default=4, help="Requests per client.")
    ap.add_argument("--server-tokens", type=int, default=32)
    ap.add_argument("--text", type=Path, default=ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "state-bench")
    ap.add_argument("--json", type=Path, default=None, help="Default: OUT/results.json.")
    ap.add_argument("--parts", nargs="+", default=["ttft", "batch", "verify", "spec", "server"],
                    choices=["ttft", "batch", "verify", "spec", "server"], help="What to measure.")
    args = ap.parse_args()
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    raw = args.text.read_bytes()
    held = raw[int(len(raw) * 0.9):]
    text = np.frombuffer(held, np.uint8).astype(np.int64)
    draft_pkg = build(args.draft, args.out, console.print) if args.draft else None
    results: dict[str, Any] = {"threads": args.threads, "reps": args.reps, "cpus": os.cpu_count(), "models": {}}
    json_path = args.json or args.out / "results.json"
    for model in args.models:
        pkg = build(model, args.out, console.print)
        session = Session(pkg, threads=args.threads, check_finite=False)
        draft = (args.draft, Session(draft_pkg, threads=args.threads, check_finite=False)) if draft_pkg else None
        r = {"package": str(pkg), "threads": args.threads, "load_before": os.getloadavg()[0]}
        if "ttft" in args.parts:
            console.print(f"{model}: TTFT ...")
            r["ttft"] = bench_ttft(session, text, args.reps, args.question)
        if "batch" in args.parts:
            console.print(f"{model}: batched decoding ...")
            r["batch"] = bench_batch(session, text, args.reps, args.steps)
        if "verify" in args.parts:
            console.print(f"{model}: verify pass ...")
            r["verify"] = bench_verify(session, args.reps)
        if "spec" in args.parts:
            console.print(f"{model}: speculative decoding ...")
            r["spec"] = bench_spec(session, draft, text, max(2, args.reps // 2), args.spec_tokens)
        if "server" in args.parts:
            console.print(f"{model}: server ...")
            r["server"] = bench_server(pkg, args.threads, held, args.server_requests, args.server_tokens)
        r["load_after"] = os.getloadavg()[0]
        results["models"][model] = r
        console.print(table(model, r))
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
