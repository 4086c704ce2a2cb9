"""Soak: generate 100,000 tokens on every back end; RSS, ms/token and finite logits per window.

    .venv/bin/python benchmarks/soak.py [--tokens 100000] [--window 5000] [--package DIR | --model NAME]
        [--backends ort openvino openvino-stateful tvm] [--threads 2] [--json out/soak.json]

Exports the model as `edgelin export --int8` does (the built-in model by default) to OUT/int8, or
reuses --package DIR, and compiles it for the back ends asked for that need it (OpenVINO stateless
and stateful, TVM for this machine; a package given with --package gains them in place). Each back
end then runs alone, one after another, in a fresh process (so its RSS is its own): it samples
--tokens tokens after a short prompt through `edgelin.runtime.Session` and records, every
--window tokens, VmRSS and VmHWM from /proc/self/status, ms/token over the window, and whether
every step's logits were finite. Prints a summary per back end and writes every window to --json.
Exits 1 if any back end failed or produced NaN or Inf logits.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

BACKENDS = ["ort", "openvino", "openvino-stateful", "tvm"]
LIBRARIES = {"ort": "onnxruntime", "openvino": "openvino", "openvino-stateful": "openvino", "tvm": "tvm"}
COMPILED_AS = {"openvino": ("openvino", "stateless"), "openvino-stateful": ("openvino", "stateful"),
               "tvm": ("tvm", platform.machine())}  # the manifest's backends[family][variant]


def memory() -> dict[str, int]:
    """This process's resident set (VmRSS) and its peak (VmHWM), in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024, "hwm_bytes": int(fields["VmHWM"].split()[0]) * 1024}


def soak(package: Path, backend: str, tokens: int, window: int, threads: int, prompt: str,
         temperature: float, top_k: int, seed: int) -> Iterator[dict[str, Any]]:
    """Generate `tokens` tokens on `backend`; yield the memory after loading, then one record per window.

    Runs in the child process: it imports the runtime (numpy + the back end) and nothing else.
    Stops after the window where logits first hold NaN or Inf (the sampler has nothing to draw from).
    """
    from edgelin.runtime import SamplingConfig, Session, encode_prompt, load_tokenizer, sample

    session = Session(package, backend=backend, threads=threads, check_finite=False,
                      trust_native_code=backend == "tvm")  # the TVM library was compiled by this script
    yield {"loaded": memory()}
    sampling, rng = SamplingConfig(temperature, top_k=top_k), np.random.default_rng(seed)
    ids, state = encode_prompt(load_tokenizer(package, session.manifest), prompt), session.new_state(1)
    done, finite = 0, True
    while done < tokens and finite:
        n, start = 0, time.perf_counter()
        while n < min(window, tokens - done):
            logits, state = session.forward(np.array([ids], np.int64), state, logits="last", donate=True)
            if not np.isfinite(logits).all():
                finite = False
                break
            ids = [int(sample(logits[:, -1], sampling, rng)[0])]
            n += 1
        done += n
        yield {"tokens": done, "ms_per_token": 1e3 * (time.perf_counter() - start) / max(n, 1), "finite": finite,
               **memory(), "load_average": os.getloadavg()[0]}


def build(args: argparse.Namespace, backends: list[str], log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The INT8 package (exported, or --package) compiled for `backends`; and what it is."""
    pkg, model = args.package, None
    if pkg is None:
        import edgelin

        pkg = args.out / "int8"
        with progress() as bars:
            tasks: dict[str, Any] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total)
                bars.update(tasks[stage], completed=done, total=total)

            r = edgelin.export(args.model, pkg, scheme="int8", force=True, on_progress=on_progress)
        model = r.model
        log(f"exported {model} to {pkg}: loss increase {r.report['loss_increase_pct']:+.3f}%")
    from edgelin.runtime import read_package

    for backend in backends:
        family, variant = COMPILED_AS.get(backend, (None, None))
        if family is None or variant in (read_package(pkg).raw.get("backends") or {}).get(family, {}):
            continue
        start = time.perf_counter()
        if family == "openvino":
            from edgelin.exporters.openvino import export_openvino

            export_openvino(pkg, variants=(variant,))
        else:
            from edgelin.exporters.tvm import export_tvm

            export_tvm(pkg)
        log(f"compiled {pkg} for {backend} in {time.perf_counter() - start:.0f}s")
    return pkg, {"model": model, "package": str(pkg), "precision": read_package(pkg).precision.get("scheme")}


def progress():
    """Rich progress bars, one per export stage or back end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_child(args: argparse.Namespace, pkg: Path, backend: str, run: dict[str, Any], save: Callable[[], None],
              bars, task) -> None:
    """One back end's soak in a fresh process, into `run`: its memory after loading, every window (`save`d as
    it comes), a summary, and an error if it failed."""
    cmd = [sys.executable, __file__, "--child", backend, "--package", str(pkg), "--tokens", str(args.tokens),
           "--window", str(args.window), "--threads", str(args.threads), "--prompt", args.prompt,
           "--temperature", str(args.temperature), "--top-k", str(args.top_k), "--seed", str(args.seed)]
    run.update(backend=backend, load_average_before=os.getloadavg()[0], windows=[])
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty back end cannot block the child
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True) as child:
            for line in child.stdout:
                record = json.loads(line)
                if "loaded" in record:
                    run["loaded"] = record["loaded"]
                else:
                    run["windows"].append(record)
                    bars.update(task, completed=record["tokens"])
                    save()
        err.seek(0)
        lines = err.read().strip().splitlines()
    run.update(seconds=time.perf_counter() - start, load_average_after=os.getloadavg()[0])
    windows = run["windows"]
    run["finite"] = all(w["finite"] for w in windows)
    if child.returncode:
        run["error"] = lines[-1] if lines else f"exit code {child.returncode}"
    elif not run["finite"]:
        run["error"] = f"NaN or Inf logits after {windows[-1]['tokens']} tokens"
    elif not windows or windows[-1]["tokens"] < args.tokens:
        run["error"] = f"stopped after {windows[-1]['tokens'] if windows else 0} tokens"
    if windows:
        first, last = windows[0], windows[-1]
        run["summary"] = {"tokens": last["tokens"], "rss_first_bytes": first["rss_bytes"],
                          "rss_last_bytes": last["rss_bytes"], "hwm_bytes": max(w["hwm_bytes"] for w in windows),
                          "ms_per_token_first": first["ms_per_token"], "ms_per_token_last": last["ms_per_token"],
                          "ms_per_token_median": float(np.median([w["ms_per_token"] for w in windows])),
                          "drift": last["ms_per_token"] / first["ms_per_token"]}
    save()


def table(runs: list[dict[str, Any]]):
    """The summary: one row per back end (first and last window, peak RSS, drift = last / first ms per token)."""
    from rich.table import Table

    t = Table(title="soak: first and last window")
    for col in ("back end", "tokens", "RSS MiB first", "last", "peak", "ms/tok first", "last", "median", "drift",
                "finite"):
        t.add_column(col, justify="left" if col == "back end" else "right")
    mib = 2 ** 20
    for r in runs:
        s = r.get("summary")
        if s is None:
            t.add_row(r["backend"], "0", *["-"] * 8)
            continue
        t.add_row(r["backend"], f"{s['tokens']:,}", f"{s['rss_first_bytes'] / mib:.1f}",
                  f"{s['rss_last_bytes'] / mib:.1f}", f"{s['hwm_bytes'] / mib:.1f}", f"{s['ms_per_token_first']:.3f}", f"{s['ms_per_token_last']:.3f}",
                  f"{s['ms_per_token_median']:.3f}", f"{s['drift']:.2f}", "yes" if r["finite"] else "NO")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000, help="Tokens to generate per back end.")
    ap.add_argument("--window", type=int, default=5000, help="Tokens per recorded window.")
    ap.add_argument("--package", type=Path, default=None, help="Use this package instead of exporting one.")
    ap.add_argument("--model", default=None, help="Model to export with --int8 (default: the built-in model).")
    ap.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                    help="Back ends to soak (default: every one whose library is installed).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--temperature", type=float, default=0.8, help="0: greedy.")
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("out/soak"), help="Where the exported package goes.")
    ap.add_argument("--json", type=Path, default=Path("out/soak.json"))
    ap.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)  # one back end's run, in its own process
    args = ap.parse_args()
    if args.tokens < 1 or args.window < 1:
        ap.error("--tokens and --window must be at least 1")
    if args.package is not None and args.model is not None:
        ap.error("give --package or --model, not both")
    if args.child:
        records = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)  # whatever a back end library prints goes to stderr, so stdout carries only records
        for record in soak(args.package, args.child, args.tokens, args.window, args.threads, args.prompt,
                           args.temperature, args.top_k, args.seed):
            print(json.dumps(record), file=records, flush=True)
        return

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)  # the table's 10 columns in a log too
    installed = [b for b in BACKENDS if importlib.util.find_spec(LIBRARIES[b]) is not None]
    backends = args.backends or installed
    missing = [b for b in backends if b not in installed]
    if missing:
        ap.error(f"{missing[0]} needs {LIBRARIES[missing[0]]}, which is not installed")
    pkg, about = build(args, backends, console.print)
    result = {**about, "tokens": args.tokens, "window": args.window, "threads": args.threads, "prompt": args.prompt,
              "sampling": {"temperature": args.temperature, "top_k": args.top_k, "seed": args.seed},
              "cpus": os.cpu_count(), "not_installed": [b for b in BACKENDS if b not in installed], "runs": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every window, so a stopped run keeps what it measured
        args.json.write_text(json.dumps(result, indent=1) + "\n")

    with progress() as bars:
        for backend in backends:
            result["runs"].append({})
            run_child(args, pkg, backend, result["runs"][-1], save, bars, bars.add_task(backend, total=args.tokens))
    console.print(table(result["runs"]))
    for r in result["runs"]:
        if "error" in r:
            console.print(f"[red]{r['backend']} failed:[/] {r['error']}")
    console.print(f"wrote {args.json}")
    sys.exit(1 if any("error" in r for r in result["runs"]) else 0)


if __name__ == "__main__":
    main()
