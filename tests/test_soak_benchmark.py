"""benchmarks/soak.py end to end on ONNX Runtime: an INT8 export of gla-tiny, then a package with NaN weights."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelin.runtime.package import read_package, rewrite_package

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def soak(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SOAK), "--backends", "ort", "--tokens", "2000", "--window", "500",
                           *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The soak of an INT8 gla-tiny export (random init): the process and its JSON."""
    tmp = tmp_path_factory.mktemp("soak")
    proc = soak("--model", "gla-tiny", "--out", tmp / "out", "--json", tmp / "soak.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads((tmp / "soak.json").read_text()), tmp / "out" / "int8"


def test_every_window_is_recorded_and_finite(exported):
    _, result, _ = exported
    assert (result["model"], result["tokens"], result["window"], result["precision"]) == ("gla-tiny", 2000, 500, "w8a8")
    (run,) = result["runs"]
    assert run["backend"] == "ort" and "error" not in run and run["finite"]
    assert [w["tokens"] for w in run["windows"]] == [500, 1000, 1500, 2000]
    for w in run["windows"]:
        assert w["finite"] and w["ms_per_token"] > 0 and 0 < w["rss_bytes"] <= w["hwm_bytes"] and w["load_average"] >= 0
    assert run["loaded"]["rss_bytes"] > 0
    summary = run["summary"]
    assert summary["tokens"] == 2000
    assert summary["rss_last_bytes"] == run["windows"][-1]["rss_bytes"]
    assert summary["hwm_bytes"] == max(w["hwm_bytes"] for w in run["windows"])
    assert summary["drift"] == pytest.approx(summary["ms_per_token_last"] / summary["ms_per_token_first"])


def test_nan_logits_fail_the_run(exported, tmp_path):
    _, _, pkg = exported
    weights = bytearray((pkg / "weights.bin").read_bytes())
    for t in read_package(pkg).raw["weights"]["tensors"]:
        if t["dtype"] == "float32":
            weights[t["offset"]:t["offset"] + t["length"]] = np.full(t["length"] // 4, np.nan, np.float32).tobytes()
    nan_pkg = rewrite_package(pkg, tmp_path / "nan", files={"weights.bin": bytes(weights)})
    proc = soak("--package", nan_pkg, "--json", tmp_path / "soak.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (run,) = json.loads((tmp_path / "soak.json").read_text())["runs"]
    assert not run["finite"] and "NaN or Inf" in run["error"]
    assert not run["windows"][-1]["finite"]
