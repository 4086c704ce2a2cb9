"""`edgelin.export`, the library behind `edgelin export`: the same packages as the CLI, schemes by
name or object, profiles as registered variants of one pipeline; the CLI as a thin shell over it."""
import ast
import json
from pathlib import Path

import pytest
import torch

import edgelin
from cli_helpers import run
from edgelin.api import resolve_scheme
from edgelin.calibration import default_text
from edgelin.cli import COMMAND_MODULES
from edgelin.errors import EdgelinError
from edgelin.exporters.package import export_package
from edgelin.exporters.profiles import PROFILES, Profile, apply_profile, register_profile
from edgelin.models import LM, ZOO
from edgelin.quantize.htp import HtpScheme
from edgelin.quantize.schemes import W4A16, W8A8, Int4Format, PerGroup
from edgelin.runtime import read_package


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(default_text()[:3000])
    return path


def test_fp_export_equals_the_cli(tmp_path, capsys):
    stages = []
    result = edgelin.export("gla-tiny", tmp_path / "lib", prefill_tokens=8,
                            on_progress=lambda stage, done, total: stages.append((stage, done, total)))
    assert capsys.readouterr().out == ""  # the library prints nothing
    assert (result.package, result.model, result.trained, result.report) == (tmp_path / "lib", "gla-tiny", False, {})
    assert ("export", 1, 1) in stages
    assert run("export", "gla-tiny", "-o", tmp_path / "cli", "--prefill-tokens", 8).exit_code == 0
    lib, cli = read_package(tmp_path / "lib"), read_package(tmp_path / "cli")
    assert lib.precision == cli.precision == {"scheme": "fp32"}
    assert lib.files == cli.files  # the same graphs and weights, byte for byte


def test_int8_export_equals_the_cli(tmp_path, calib):
    result = edgelin.export("gla-tiny", tmp_path / "lib", scheme="int8", calib=calib, prefill_tokens=16)
    r = run("export", "gla-tiny", "--int8", "--calib", calib, "--prefill-tokens", 16, "-o", tmp_path / "cli")
    assert r.exit_code == 0, r.output
    lib, cli = read_package(tmp_path / "lib"), read_package(tmp_path / "cli")
    assert lib.precision == cli.precision and lib.precision["scheme"] == "w8a8" and lib.precision["layers"]
    assert [s.dtype for s in lib.states] == [s.dtype for s in cli.states]
    report = json.loads((tmp_path / "cli" / "report" / "report.json").read_text())
    assert set(result.report) == set(report) and result.report["candidate"] == str(tmp_path / "lib")
    for key in ("loss_reference", "loss_candidate", "kl_mean", "top1_agreement"):
        assert result.report[key] == pytest.approx(report[key], rel=1e-6), key


def test_schemes_by_name_or_object():
    assert resolve_scheme(None) is None
    assert resolve_scheme("int4", group_size=64, gptq=True) == W4A16(granularity=PerGroup(64), gptq=True)
    assert resolve_scheme("w8a8", state="fp32") == W8A8(state="fp32")
    assert resolve_scheme("int4", "openvino-npu").int4_format == Int4Format.QDQ  # the profile's 4-bit form
    assert resolve_scheme(None, "qnn-htp") == HtpScheme()  # HTP always quantizes: W8A16 by default
    assert resolve_scheme("w4a8", "qnn-htp") == HtpScheme(weight_bits=4, matmul_act_bits=8)
    assert resolve_scheme(W8A8(smooth=0.5)) == W8A8(smooth=0.5)


@pytest.mark.parametrize("args, kwargs, message", [
    ((None,), {"rotate": True}, "need --int8"),
    ((None,), {"calib": "text.txt"}, "need --int8"),
    (("int8", "qnn-htp"), {"gptq": True, "state": "fp32"}, "--profile qnn-htp does not take --state, --gptq"),
    (("w8", "qnn-htp"), {}, "does not take --w8"),
    ((W8A8(), "qnn-htp"), {}, "quantizes with HtpScheme, not W8A8"),
    ((HtpScheme(),), {}, "quantizes with QuantScheme, not HtpScheme"),
    ((W8A8(),), {"gptq": True}, "gptq go with a scheme name"),
    (("int8",), {"group_size": 64}, "--group-size is for 4-bit schemes"),
    (("int9",), {}, "unknown quantization scheme 'int9'"),
    (("int8", "npu"), {}, "--profile must be one of ort-cpu, qnn-htp, openvino-npu, not 'npu'"),
])
def test_bad_schemes_and_options(args, kwargs, message):
    with pytest.raises(EdgelinError, match=message):
        resolve_scheme(*args, **kwargs)


def test_a_registered_profile_is_an_export_target():
    register_profile(Profile("test-npu", None, int4_format="qdq", refuses=("gptq",), refusal_reason="no GPTQ here"))
    try:
        assert resolve_scheme("int4", "test-npu").int4_format == Int4Format.QDQ
        with pytest.raises(EdgelinError, match=r"--profile test-npu does not take --gptq \(no GPTQ here\)"):
            resolve_scheme("int4", "test-npu", gptq=True)
    finally:
        del PROFILES["test-npu"]


def test_bad_export_writes_nothing(tmp_path):
    with pytest.raises(EdgelinError, match=r"--prefill-tokens must be an integer in \[2, "):
        edgelin.export("gla-tiny", tmp_path / "p", prefill_tokens=1)
    with pytest.raises(EdgelinError, match="unknown model"):
        edgelin.export("no-such-model", tmp_path / "p")
    model = LM(ZOO["gla-tiny"]).init_weights()
    with torch.no_grad():
        model.blocks[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(EdgelinError, match="blocks.1.mlp.down_proj.weight holds inf or NaN"):
        edgelin.export(model, tmp_path / "p")
    assert not any(tmp_path.iterdir())


def test_cli_command_modules_do_not_import_each_other():
    root = Path(edgelin.cli.__file__).parent
    commands = {f"edgelin.cli.{name}" for name in COMMAND_MODULES}
    for name in COMMAND_MODULES:
        imported = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
        assert not imported & (commands - {f"edgelin.cli.{name}"}), name


def test_rewriting_a_version_1_package_keeps_version_1(tmp_path):
    pkg = export_package(LM(ZOO["gla-tiny"]).init_weights(), tmp_path / "v1", prefill_tokens=8)
    doc = json.loads((pkg / "manifest.json").read_text())
    (pkg / "manifest.json").write_text(json.dumps({**doc, "format_version": 1}))
    static = apply_profile(pkg, "ort-cpu", tmp_path / "static")
    assert read_package(static).format_version == 1
    assert read_package(static).raw["profile"] == {"name": "ort-cpu", "batch": 1}
