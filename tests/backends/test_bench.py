"""`edgelin bench` reports speed, memory, the bandwidth floor and the torch baseline, as JSON."""
import json

import onnx
import pytest
from onnx import numpy_helper

from typer.testing import CliRunner

from edgelin.bench import weight_bytes_per_token
from edgelin.cli import load_commands

KEYS = {"package", "backend", "device", "threads", "precision", "decode_tokens_per_s", "decode_tokens_per_s_mean",
        "prefill_tokens_per_s",
        "ms_per_token_p50", "ms_per_token_p90", "peak_rss_bytes", "bytes_on_disk", "weight_bytes_per_token",
        "copy_bandwidth_bytes_per_s", "bandwidth_floor_ms_per_token", "bandwidth_floor_tokens_per_s",
        "fraction_of_floor", "read_bandwidth_bytes_per_s", "fraction_of_read_floor", "torch_eager_fp32", "load_average",
        "cpu_count"}


def test_bench_json(fp_packages, tmp_path):
    pkg = fp_packages["gla-tiny"]
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(load_commands(), ["bench", str(pkg), "--backend", "openvino-stateful", "--threads", "1",
                                             "--decode-tokens", "16", "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert set(data) == KEYS
    assert set(data["torch_eager_fp32"]) == {"decode_tokens_per_s", "decode_tokens_per_s_mean", "prefill_tokens_per_s",
                                             "ms_per_token_p50", "ms_per_token_p90"}
    assert data["decode_tokens_per_s"] > 0 and data["peak_rss_bytes"] > 10 << 20
    assert data["ms_per_token_p50"] <= data["ms_per_token_p90"]
    assert data["fraction_of_floor"] > 0
    assert data["fraction_of_floor"] == pytest.approx(data["decode_tokens_per_s"] / data["bandwidth_floor_tokens_per_s"])
    read_floor_s = data["weight_bytes_per_token"] / data["read_bandwidth_bytes_per_s"]
    assert data["fraction_of_read_floor"] == pytest.approx(data["decode_tokens_per_s"] * read_floor_s)
    # every weight is read whole (the tied head reads the embedding table the Gather reads one row of)
    proto = onnx.load(str(pkg / "decode.onnx"))
    every = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    assert data["weight_bytes_per_token"] == weight_bytes_per_token(pkg / "decode.onnx") == every


def test_bench_unknown_backend(fp_packages):
    r = CliRunner().invoke(load_commands(), ["bench", str(fp_packages["gla-tiny"]), "--backend", "nope", "--no-baseline"])
    assert r.exit_code == 2 and "unknown back end" in r.output
