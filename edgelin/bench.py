"""`bench_package`: decode / prefill speed, memory and the memory-bandwidth floor of a package on one back end.

Decode of a small recurrent model is bound by reading the weights once per token, so the floor is
`weight bytes read per token / copy bandwidth`, with the bandwidth measured by numpy in the same run
on the same number of threads (STREAM convention: a copy moves 2 x its size, best of 5). On some
machines the copy reading is bimodal from run to run (its stores take different paths), so a
second floor divides by a read-only stream (DRAM into a cache-sized buffer), which is what
decode does with the weights. Decode
tokens/s is 1 / the median step time (robust on a shared machine; the mean-based rate is kept as
`decode_tokens_per_s_mean`), prefill the best of three runs of the prompt. Weight bytes per token
count every initializer of the decode graph at its stored width, except tables only gathered from
(the embedding), of which one row per token is read.

The back end runs in a fresh child process, so its peak RSS is its own. The baseline is the PyTorch
eager FP32 step form of the same architecture (`LM.step`), weights re-initialized: speed does not
depend on their values. Only the baseline imports torch.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgelin.errors import EdgelinError

COPY_BYTES = 256 << 20


def _slices(n: int, threads: int) -> list[tuple[int, int]]:
    parts = np.array_split(np.arange(n), threads)
    return [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]


def _best_seconds(work, args: list[tuple], repeats: int) -> float:
    """Fastest of `repeats` wall times of `work(*a)` run on one thread per entry of `args`."""
    best = float("inf")
    for _ in range(repeats):
        pool = [threading.Thread(target=work, args=a) for a in args]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(threads: int, nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes moved per second by `threads` numpy copies of disjoint slices (read + write counted)."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)

    def work(lo: int, hi: int) -> None:
        np.copyto(dst[lo:hi], src[lo:hi])

    return 2 * nbytes / _best_seconds(work, _slices(src.size, threads), repeats)


def read_bandwidth(threads: int, nbytes: int = COPY_BYTES, repeats: int = 5, sink_bytes: int = 512 << 10) -> float:
    """Bytes read per second by `threads` threads streaming disjoint slices through a cache-sized sink."""
    src = np.ones(nbytes // 8, np.float64)
    n = sink_bytes // 8

    def work(lo: int, hi: int) -> None:
        sink = np.empty(n)
        for a in range(lo, hi - n + 1, n):
            np.copyto(sink, src[a : a + n])

    bounds = _slices(src.size, threads)
    read = sum((hi - lo) // n * sink_bytes for lo, hi in bounds)
    return read / _best_seconds(work, bounds, repeats)


def weight_bytes_per_token(onnx_path: str | os.PathLike) -> int:
    """Bytes of weights the decode graph reads for one token (gather-only tables: one row)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_path))
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    total = 0
    for t in proto.graph.initializer:
        nbytes = numpy_helper.to_array(t).nbytes
        if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            nbytes = (int(np.prod(t.dims)) + 1) // 2
        used = uses.get(t.name, [])
        if used and all(op == "Gather" and i == 0 for op, i in used) and len(t.dims) >= 2:
            nbytes //= t.dims[0]  # one row per token
        total += nbytes
    return total


def _decode_times(step, ids, state, warmup: int) -> list[float]:
    """Seconds per decode step over ids[warmup:], after `warmup` untimed steps."""
    times = []
    for t in range(len(ids)):
        start = time.perf_counter()
        _, state = step(ids[t], state)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def _speeds(times: list[float], prefill_tokens: int, prefill_s: float) -> dict:
    ms = np.array(times) * 1e3
    p50, p90 = float(np.percentile(ms, 50)), float(np.percentile(ms, 90))
    return {"decode_tokens_per_s": 1e3 / p50, "decode_tokens_per_s_mean": len(times) / sum(times),
            "prefill_tokens_per_s": prefill_tokens / prefill_s, "ms_per_token_p50": p50, "ms_per_token_p90": p90}


def _run_backend(package: str, backend: str, threads: int, device: str | None, decode_tokens: int,
                 prefill_chunks: int, trust_native_code: bool = False) -> dict:
    from edgelin.runtime import Session

    session = Session(package, backend=backend, threads=threads, device=device, trust_native_code=trust_native_code)
    rng = np.random.default_rng(0)
    chunk = session.prefill_tokens
    prompt = rng.integers(0, session.vocab_size, (1, chunk * prefill_chunks))
    _, state = session.forward(prompt[:, :chunk], session.new_state(1))  # warm-up
    prefill_s = float("inf")
    for _ in range(3):  # best of three: the prompt is short
        start = time.perf_counter()
        _, state = session.forward(prompt, session.new_state(1))
        prefill_s = min(prefill_s, time.perf_counter() - start)
    def step(ids, state):  # a generation loop: each state is given up for the next (as `generate` does)
        return session.forward(ids, state, donate=True)

    times = _decode_times(step, rng.integers(0, session.vocab_size, (decode_tokens + 8, 1, 1)), state, 8)
    return {**_speeds(times, prompt.shape[1], prefill_s), "peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child_main() -> None:
    """Entry point of the child process: JSON arguments in argv[1], one JSON line out."""
    try:
        print(json.dumps(_run_backend(**json.loads(sys.argv[1]))))
    except EdgelinError as e:
        print(json.dumps({"error": str(e)}))
    except Exception as e:  # reported to the parent as one line
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))


def _in_child(**kwargs) -> dict:
    """Run `_run_backend` in a fresh interpreter (torch never imported there), return its result."""
    code = "from edgelin.bench import _child_main; _child_main()"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgelinError(f"the benchmark process failed: {tail}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise EdgelinError(result["error"])
    return result


def torch_baseline(architecture: dict, threads: int, decode_tokens: int, prefill_tokens: int) -> dict:
    """The PyTorch eager FP32 step form of `architecture` (random weights): decode and prefill speed."""
    import torch

    from edgelin.models import LM
    from edgelin.models.config import LMConfig

    torch.set_num_threads(threads)
    model = LM(LMConfig.from_dict(architecture)).init_weights().eval()
    rng = np.random.default_rng(0)
    vocab = model.config.vocab_size
    with torch.no_grad():
        prompt = torch.from_numpy(rng.integers(0, vocab, (1, prefill_tokens)))
        model(prompt, None)  # warm-up
        start = time.perf_counter()
        _, state = model(prompt, None)
        prefill_s = time.perf_counter() - start
        times = _decode_times(model.step, torch.from_numpy(rng.integers(0, vocab, (decode_tokens + 4, 1, 1))), state, 4)
    return _speeds(times, prefill_tokens, prefill_s)


def bench_package(package: str | os.PathLike, *, backend: str = "ort", threads: int = 2, device: str | None = None,
                  decode_tokens: int = 128, prefill_chunks: int = 4, baseline: bool = True,
                  trust_native_code: bool = False) -> dict:
    """Measure a package on one back end; see the module docstring for what each number means.

    Args:
        package: the package directory.
        backend: "ort", "openvino", "openvino-stateful" or "tvm".
        threads: threads for the back end, the bandwidth copy and the torch baseline.
        device: OpenVINO device name.
        decode_tokens: timed decode steps (after 8 warm-up steps).
        prefill_chunks: the timed prompt is this many prefill chunks long.
        baseline: also time the PyTorch eager FP32 step form (imports torch).
        trust_native_code: allow the tvm back end to load the package's native library.
    Returns:
        A JSON-ready dict (keys in docs/BENCHMARKS.md).
    Example:
        >>> bench_package("out/gla-10m", backend="openvino-stateful")["fraction_of_floor"]  # doctest: +SKIP
    """
    from edgelin.runtime import package_size_bytes, read_package

    root = Path(package)
    manifest = read_package(root)
    if threads < 1 or decode_tokens < 1 or prefill_chunks < 1:
        raise EdgelinError("threads, decode tokens and prefill chunks must be >= 1")
    load_before = os.getloadavg()[0]
    run = _in_child(package=str(root), backend=backend, threads=threads, device=device,
                    decode_tokens=decode_tokens, prefill_chunks=prefill_chunks, trust_native_code=trust_native_code)
    bandwidth, read = copy_bandwidth(threads), read_bandwidth(threads)
    weights = weight_bytes_per_token(root / manifest.graphs["decode"].file)
    floor_s = weights / bandwidth
    result = {
        "package": str(root), "backend": backend, "device": device or "CPU", "threads": threads,
        "precision": manifest.precision.get("scheme", "fp32"),
        **run,
        "bytes_on_disk": package_size_bytes(root),
        "weight_bytes_per_token": weights,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "bandwidth_floor_ms_per_token": floor_s * 1e3,
        "bandwidth_floor_tokens_per_s": 1 / floor_s,
        "fraction_of_floor": run["decode_tokens_per_s"] * floor_s,
        "read_bandwidth_bytes_per_s": read,
        "fraction_of_read_floor": run["decode_tokens_per_s"] * weights / read,
        # 1-minute load average before and after: other work on the machine slows every number here
        "load_average": [load_before, os.getloadavg()[0]], "cpu_count": os.cpu_count(),
    }
    if baseline:
        prefill = manifest.graphs["prefill"].tokens * prefill_chunks if "prefill" in manifest.graphs else 16
        result["torch_eager_fp32"] = torch_baseline(manifest.architecture, threads, decode_tokens, prefill)
    return result
