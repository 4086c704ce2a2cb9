"""`edgelin bench`: speed, memory and the bandwidth floor of a package on one back end."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from edgelin.atomic import check_destination, write_atomic
from edgelin.cli import app, console, user_errors


@app.command()
@user_errors
def bench(
    package: Path = typer.Argument(..., help="Package directory."),
    backend: str = typer.Option("ort", help="ort, openvino, openvino-stateful or tvm."),
    threads: int = typer.Option(2, help="Threads for the back end, the bandwidth copy and the baseline."),
    device: Optional[str] = typer.Option(None, help="OpenVINO device (CPU, NPU)."),
    decode_tokens: int = typer.Option(128, help="Timed decode steps."),
    baseline: Optional[bool] = typer.Option(None, help="Also time the PyTorch eager FP32 step form "
                                            "(default: when torch is installed)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    trust_native_code: bool = typer.Option(False, "--trust-native-code", help="Allow a back end that runs native "
                                           "code from the package (tvm); only for packages you trust."),
) -> None:
    """Decode and prefill tokens/s, ms/token p50/p90, peak RSS, bytes on disk, the bandwidth floor."""
    from edgelin.bench import bench_package

    if baseline is None:
        baseline = importlib.util.find_spec("torch") is not None

    if json_out:
        check_destination(json_out, what="result JSON")
    with console.status(f"benchmarking {package} on {backend}"):
        r = bench_package(package, backend=backend, threads=threads, device=device,
                          decode_tokens=decode_tokens, baseline=baseline, trust_native_code=trust_native_code)
    if json_out:
        write_atomic(json_out, json.dumps(r, indent=2) + "\n", what="result JSON")
    table = Table("", backend, "torch eager fp32" if baseline else "", title=f"{package} ({r['precision']}, {threads} threads)")
    t = r.get("torch_eager_fp32", {})
    for key, label, fmt in (("decode_tokens_per_s", "decode tok/s", "{:.1f}"), ("prefill_tokens_per_s", "prefill tok/s", "{:.1f}"),
                            ("ms_per_token_p50", "ms/token p50", "{:.2f}"), ("ms_per_token_p90", "ms/token p90", "{:.2f}")):
        table.add_row(label, fmt.format(r[key]), fmt.format(t[key]) if key in t else "")
    table.add_row("peak RSS", f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", "")
    table.add_row("bytes on disk", f"{r['bytes_on_disk'] / 2**20:.1f} MiB", "")
    table.add_row("weights read / token", f"{r['weight_bytes_per_token'] / 2**20:.1f} MiB", "")
    table.add_row("copy bandwidth", f"{r['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s", "")
    table.add_row("bandwidth floor", f"{r['bandwidth_floor_tokens_per_s']:.1f} tok/s", "")
    table.add_row("fraction of floor", f"{r['fraction_of_floor']:.0%}", "")
    table.add_row("read bandwidth", f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
                  f"{r['fraction_of_read_floor']:.0%} of its floor")
    console.print(table)
