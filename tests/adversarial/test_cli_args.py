"""Bad command-line arguments, command by command: one `error:` line naming the problem, exit 2, nothing written."""
from pathlib import Path

import pytest

from cli_helpers import run

PROMPT = ["--prompt", "hi", "--max-new-tokens", "2"]


def assert_one_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert fragment.lower() in lines[0].lower(), lines[0]


GENERATE = [
    (["--threads", "-5"], "threads"),
    (["--threads", "0"], "threads"),
    (["--threads", "100000"], "threads"),
    (["--seed", "-1"], "seed"),
    (["--device", "NPU"], "device"),
    (["--backend", "cuda"], "back end"),
    (["--backend", ""], "back end"),
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--temperature", "inf"], "temperature"),
    (["--top-k", "-3"], "top_k"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-p", "nan"], "top_p"),
    (["--max-new-tokens", "-1"], "max_new_tokens"),
    (["--ids", "1,2"], "exactly one"),
    (["--state-in", "/nonexistent/s.npz"], "s.npz"),
    (["--state-in", "/dev/null"], "snapshot"),
    (["--state-in", "."], "snapshot"),
    (["--backend", "tvm"], "tvm"),
]


@pytest.mark.parametrize("extra,fragment", GENERATE, ids=[" ".join(a) or "empty" for a, _ in GENERATE])
def test_generate(pkg, extra, fragment):
    assert_one_error(run("generate", pkg, *PROMPT, *extra), fragment)


@pytest.mark.parametrize("ids,fragment", [("a,b", "integers"), ("1,,x", "integers"), ("999999", "token"),
                                          ("-1", "token"), ("1.5", "integers")])
def test_generate_bad_ids(pkg, ids, fragment):
    assert_one_error(run("generate", pkg, "--ids", ids, "--max-new-tokens", "1"), fragment)


def test_generate_without_prompt(pkg):
    assert_one_error(run("generate", pkg, "--max-new-tokens", "1"), "exactly one")


def test_generate_empty_state_file(pkg, tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_one_error(run("generate", pkg, *PROMPT, "--state-in", tmp_path / "empty.npz"), "snapshot")


EXPORT = [
    (["--max-context", "0"], "--max-context"),
    (["--max-context", "-5"], "--max-context"),
    (["--prefill-tokens", "0"], "--prefill-tokens"),
    (["--prefill-tokens", "1"], "--prefill-tokens"),
    (["--prefill-tokens", "99999999999"], "--prefill-tokens"),
    (["--int8", "--int4"], "one scheme"),
    (["--max-loss-increase", "-1", "--int8"], "max-loss-increase"),
    (["--max-loss-increase", "nan", "--int8"], "max-loss-increase"),
    (["--max-loss-increase", "inf", "--int8"], "max-loss-increase"),
    (["--max-loss-increase", "1"], "need --int8"),
    (["--int8", "--calib", "/nonexistent.txt"], "nonexistent"),
    (["--profile", "no-such-npu"], "profile"),
]


@pytest.mark.parametrize("extra,fragment", EXPORT, ids=[" ".join(a) for a, _ in EXPORT])
def test_export(tmp_path, extra, fragment):
    assert_one_error(run("export", "gla-tiny", "-o", tmp_path / "out", *extra), fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model,fragment", [("no-such-model", "unknown model"), ("", "the model must be"),
                                            ("/nonexistent/dir", "nonexistent")])
def test_export_bad_model(tmp_path, model, fragment):
    assert_one_error(run("export", model, "-o", tmp_path / "out"), fragment)
    assert list(tmp_path.iterdir()) == []


def test_export_empty_calibration_text(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    assert_one_error(run("export", "gla-tiny", "--int8", "--calib", tmp_path / "empty.txt", "-o", tmp_path / "out"),
                     "empty")
    assert not (tmp_path / "out").exists()


def test_export_calibration_text_not_utf8(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00" * 100)
    r = run("export", "gla-tiny", "--int8", "--calib", tmp_path / "bin.txt", "-o", tmp_path / "out")
    assert r.exit_code in (0, 2) and "Traceback" not in r.output  # bytes models take any bytes; else one error


QUANTIZE = [
    ([], "choose a scheme"),
    (["--int8", "--w8"], "one scheme"),
    (["--int4", "--group-size", "33"], "group"),
    (["--int8", "--state", "int3"], "state"),
    (["--int8", "--embedding", "int2"], "embedding"),
    (["--int8", "--lm-head", "int2"], "head"),
    (["--int4", "--int4-format", "gguf"], "format"),
    (["--int8", "--observer", "magic"], "observer"),
    (["--int8", "--smooth", "-1"], "smooth"),
    (["--int8", "--table", "/nonexistent.json"], "calibration table"),
]


@pytest.mark.parametrize("extra,fragment", QUANTIZE, ids=[" ".join(a) or "none" for a, _ in QUANTIZE])
def test_quantize(pkg, tmp_path, extra, fragment):
    assert_one_error(run("quantize", pkg, "-o", tmp_path / "q", *extra), fragment)
    assert not (tmp_path / "q").exists()


def test_quantize_table_from_another_file(pkg, tmp_path):
    (tmp_path / "t.json").write_text('{"not": "a table"}')
    assert_one_error(run("quantize", pkg, "--int8", "--table", tmp_path / "t.json", "-o", tmp_path / "q"), "table")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("command", [["inspect"], ["bench"], ["calibrate"], ["quantize", "--int8"],
                                     ["compile", "--backend", "openvino"], ["generate", *PROMPT]])
@pytest.mark.parametrize("where", ["missing", "file", "empty-dir"])
def test_not_a_package(tmp_path, command, where):
    path = tmp_path / "p"
    if where == "file":
        path.write_text("x")
    elif where == "empty-dir":
        path.mkdir()
    args = [command[0], path, *command[1:]]
    assert_one_error(run(*args), str(path))


@pytest.mark.parametrize("extra,fragment", [(["--backend", "onnx"], "--backend"), (["--backend", "tvm", "--target", "riscv"], "target"),
                                            (["--backend", "openvino", "--target", "x86_64"], "--target")])
def test_compile(pkg, extra, fragment):
    assert_one_error(run("compile", pkg, *extra), fragment)


@pytest.mark.parametrize("extra,fragment", [(["--horizon", "0"], "stream"), (["--streams", "0"], "stream"),
                                            (["--backend", "nope"], "back end"),
                                            (["--text", "/nonexistent.txt"], "nonexistent")])
def test_validate(pkg, tmp_path, extra, fragment):
    assert_one_error(run("validate", "--reference", pkg, "--candidate", pkg, "-o", tmp_path / "r", *extra), fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra,fragment", [(["--tokens", "0"], "token"), (["--streams", "0"], "stream"),
                                            (["--decode-every", "0"], "decode")])
def test_calibrate(pkg, tmp_path, extra, fragment):
    assert_one_error(run("calibrate", pkg, "-o", tmp_path / "t.json", *extra), fragment)
    assert not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("extra,fragment", [(["--threads", "0"], "threads"), (["--decode-tokens", "0"], "decode"),
                                            (["--backend", "gpu"], "back end")])
def test_bench(pkg, extra, fragment):
    assert_one_error(run("bench", pkg, "--no-baseline", *extra), fragment)


@pytest.mark.parametrize("extra,fragment", [(["--steps", "0"], "steps"), (["--lr", "-1"], "lr"),
                                            (["--batch-size", "0"], "batch"), (["--seq-len", "0"], "seq"),
                                            (["--device", "tpu"], "device")])
def test_train(tmp_path, extra, fragment):
    text = Path(__file__)
    assert_one_error(run("train", "--config", "gla-tiny", "--text", text, "-o", tmp_path / "run", *extra), fragment)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def attention_checkpoint(tmp_path_factory):
    import torch

    from edgelin.models.checkpoint import save_checkpoint
    from edgelin.models.config import LMConfig
    from edgelin.models.lm import LM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    config = LMConfig(d_model=32, n_layers=1, n_heads=2, pattern=["swa"], mixers={"swa": {"window": 32, "full_attention": True}})
    save_checkpoint(LM(config).init_weights(), path / "attention")
    save_checkpoint(LM(LMConfig(d_model=32, n_layers=1, n_heads=2)).init_weights(), path / "gla")
    return path


@pytest.mark.parametrize("model,extra,fragment", [
    ("attention", ["--into", "mamba"], "--into"), ("attention", ["--into", "gla+swa", "--window", "0"], "--window"),
    ("attention", ["--distill", "2"], "distill"), ("attention", ["--distill", "nan"], "distill"),
    ("attention", ["--feature-map", "cosine"], "feature_map"), ("attention", ["--transfer-steps", "0"], "transfer-steps"),
    ("attention", ["--transfer-lr", "-1"], "transfer-lr"), ("attention", ["--steps", "0"], "steps"),
    ("attention", ["--device", "tpu"], "device"), ("attention", ["--text", "/nonexistent.txt"], "nonexistent"),
    ("attention", ["--resume", "/nonexistent-run"], "nonexistent-run"),
    ("gla", [], "no softmax attention"), ("gla-tiny", [], "no trained weights"), ("/nonexistent-model", [], "nonexistent-model"),
])
def test_linearize(attention_checkpoint, tmp_path, model, extra, fragment):
    source = attention_checkpoint / model if (attention_checkpoint / model).exists() else model
    args = ["linearize", source, "--text", Path(__file__), "-o", tmp_path / "run", "--device", "cpu", *extra]
    assert_one_error(run(*args), fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written, no hidden run directory left
