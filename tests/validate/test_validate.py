"""edgelin validate / quantize / export --int8 from the command line: JSON keys, report files, errors."""
import json

import pytest

from cli_helpers import assert_user_error, run
from edgelin.calibration import default_text
from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO, save_checkpoint
from edgelin.models.config import LMConfig
from edgelin.quantize.package import quantize_package
from edgelin.quantize.schemes import W8A8
from edgelin.validate.drift import drift_curve

KEYS = {"loss_reference", "loss_candidate", "loss_increase_pct", "kl_mean", "kl_p99", "top1_agreement",
        "size_bytes_reference", "size_bytes_candidate", "perplexity_reference", "perplexity_candidate",
        "snr_db_layer", "snr_db_state", "drift"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(default_text()[-3000:])
    return path


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory, fp_package, table_of):
    return quantize_package(fp_package("hybrid-tiny"), tmp_path_factory.mktemp("q") / "hybrid-w8a8", W8A8(),
                            table_of("hybrid-tiny"))


def test_validate_writes_json_with_the_keys_and_a_report(tmp_path, fp_package, w8a8, text_file):
    out = tmp_path / "result.json"
    result = run("validate", "--reference", fp_package("hybrid-tiny"), "--candidate", w8a8, "--text", text_file,
                 "--json", out, "--horizon", 512, "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert KEYS <= set(data)
    assert 0.9 <= data["top1_agreement"] <= 1.0 and data["kl_mean"] >= 0 and data["kl_p99"] >= data["kl_mean"] * 0.5
    assert abs(data["loss_increase_pct"]) < 1.0  # random-init tiny model: W8A8 barely moves it
    assert data["size_bytes_candidate"] < data["size_bytes_reference"]
    assert set(data["snr_db_layer"]) == {f"blocks.{i}" for i in range(4)}
    assert all(v > 15 for v in data["snr_db_layer"].values())
    assert data["drift"]["position"][-1] == data["horizon"] == 512
    for name in ("report.md", "report.json", "drift.png", "snr.png"):
        assert (tmp_path / "report" / name).stat().st_size > 100
    assert "top1_agreement" not in result.output  # the table, not the JSON, goes to the terminal


def test_candidate_with_other_vocab_or_states_is_refused(tmp_path, fp_package, w8a8, text_file):
    other_vocab = export_package(LM(LMConfig(vocab_size=300, d_model=64, n_layers=4, n_heads=2,
                                             pattern=["short_conv", "gla", "short_conv", "swa"],
                                             mixers={"swa": {"window": 16}})).init_weights(),
                                 tmp_path / "v300", prefill_tokens=16)
    result = run("validate", "--reference", fp_package("hybrid-tiny"), "--candidate", other_vocab, "--text", text_file)
    assert_user_error(result, "vocab 300")
    result = run("validate", "--reference", fp_package("gla-tiny"), "--candidate", w8a8, "--text", text_file)
    assert_user_error(result, "different state layout")


def test_export_int8_end_to_end_and_errors(tmp_path, text_file):
    ckpt = save_checkpoint(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "ckpt")
    out = tmp_path / "gla-int8"
    result = run("export", ckpt, "--int8", "--calib", text_file, "--prefill-tokens", 16, "-o", out)
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and "loss increase" in result.output
    report = json.loads((out / "report" / "report.json").read_text())
    assert KEYS <= set(report) and report["precision"]["scheme"] == "w8a8"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "report/report.md" in manifest["files"] and "calibration.json" in manifest["files"]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(run("export", ckpt, "--int8", "--calib", empty, "-o", tmp_path / "e"), "no text")
    assert not (tmp_path / "e").exists()
    assert_user_error(run("export", ckpt, "--int8", "--int4", "-o", tmp_path / "e"), "choose one scheme")
    assert_user_error(run("export", ckpt, "--rotate", "-o", tmp_path / "e"), "need --int8")
    assert_user_error(run("export", ckpt, "--state", "fp32", "-o", tmp_path / "e"), "need --int8")
    assert_user_error(run("export", ckpt, "--int8", "--state", "int4", "-o", tmp_path / "e"), "state")

    float_states = tmp_path / "gla-int8-fp32-states"
    result = run("export", ckpt, "--int8", "--state", "fp32", "--calib", text_file, "--prefill-tokens", 16, "-o", float_states)
    assert result.exit_code == 0, result.output
    precision = json.loads((float_states / "manifest.json").read_text())["precision"]
    assert precision["scheme"] == "w8a8" and precision["state"] == "fp32"

    model = LM(ZOO["gla-tiny"]).init_weights()
    with __import__("torch").no_grad():
        model.blocks[1].mlp.down_proj.weight[3, 3] = float("nan")
    bad = save_checkpoint(model, tmp_path / "nan")
    assert_user_error(run("export", bad, "--int8", "--calib", text_file, "--prefill-tokens", 16, "-o", tmp_path / "n"),
                      "inf or NaN")
    assert not (tmp_path / "n").exists()


def test_quantize_and_calibrate_commands(tmp_path, fp_package, text_file):
    fp = fp_package("gla-tiny")
    table = tmp_path / "table.json"
    result = run("calibrate", fp, "--calib", text_file, "--tokens", 256, "--streams", 2, "-o", table)
    assert result.exit_code == 0, result.output
    assert json.loads(table.read_text())["graphs"]["decode"]
    result = run("quantize", fp, "--int8", "--table", table, "--calib", text_file, "--horizon", 256, "-o", tmp_path / "t8")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t8" / "calibration.json").read_text() == table.read_text()
    out = tmp_path / "w4"
    result = run("quantize", fp, "--int4", "--group-size", 64, "--max-loss-increase", 0.0001, "--calib", text_file,
                 "--tokens", 512, "--horizon", 256, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["precision"]["granularity"] == {"per_group": 64}
    assert report["sensitivity"]  # per-layer loss increases, most sensitive first
    lifted = {k: v for k, v in report["precision"]["layers"].items() if v != "int4" and k not in ("embed", "lm_head")}
    assert lifted, "a budget of 0.0001% must lift some layer above int4"
    assert_user_error(run("quantize", fp, "-o", tmp_path / "x"), "choose a scheme")
    assert_user_error(run("quantize", out, "--int8", "--calib", text_file, "-o", tmp_path / "x"), "already quantized")


def test_drift_curve_buckets():
    import numpy as np

    kl = np.tile(np.arange(100.0), (2, 1))
    curve = drift_curve(kl, kl > 50, buckets=4)
    assert curve["position"] == [25, 50, 75, 100]
    assert curve["kl"][0] == 12.0 and curve["top1_agreement"][0] == 0.0 and curve["top1_agreement"][-1] == 1.0
