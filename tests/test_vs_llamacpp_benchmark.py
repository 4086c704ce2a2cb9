"""benchmarks/vs_llamacpp.py: argument parsing, --small checkpoints, conversion chains, the table and JSON;
and, where llama_cpp is importable, a --small end-to-end run of one model (its converter comes from the
llama-cpp-python sdist named by $LLAMA_CPP_SDIST, else from PyPI)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_llamacpp as bench  # noqa: E402

SCRIPT = Path(bench.__file__)


def test_arguments_have_user_defaults_and_refuse_nonsense(capsys):
    args = bench.parse_args([])
    assert (args.rounds, args.threads, args.decode_tokens, args.prefill_tokens) == (3, 2, 64, 512)
    assert args.models == ["mamba2-130m", "lfm2-350m", "mamba-130m"] and args.engines == bench.ENGINES
    assert args.work == Path("out/vs-llamacpp") and not args.small
    for bad in (["--rounds", "0"], ["--models", "llama-7b"], ["--precisions", "int2"]):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(bad)
        assert e.value.code == 2
    assert "--rounds" in capsys.readouterr().err


def tiny_vocab() -> bench.Vocab:
    from tokenizers import pre_tokenizers

    return bench.Vocab(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt", "<|endoftext|>"], ["Ġ t"],
                       ["<|endoftext|>"])


@pytest.mark.parametrize("name", ["mamba2-130m", "mamba-130m", "lfm2-350m"])
def test_small_checkpoint_is_a_transformers_directory_edgelin_loads(name, tmp_path):
    from edgelin.models.loading import load_model
    from transformers import AutoTokenizer

    spec = bench.MODELS[name]
    path = bench.make_checkpoint(spec, True, tmp_path / "ckpt", tiny_vocab())
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [spec.hf_class + "ForCausalLM"]
    assert config["hidden_size"] == spec.small["hidden_size"] and config["vocab_size"] == spec.small["vocab_size"]
    assert (path / "model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok.encode(" the cat")) == " the cat" and tok.encode(" t") == [256]
    assert load_model(str(path)).model.config.vocab_size == spec.small["vocab_size"]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert bench.make_checkpoint(spec, True, path, tiny_vocab()) == path  # reused, not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_real_shapes_are_the_published_ones():
    lfm2 = bench.MODELS["lfm2-350m"].config
    assert lfm2["layer_types"].count("full_attention") == 6 and len(lfm2["layer_types"]) == 16
    assert (lfm2["hidden_size"], lfm2["vocab_size"]) == (1024, 65536)
    mamba2 = bench.MODELS["mamba2-130m"].config
    assert mamba2["num_heads"] * mamba2["head_dim"] == mamba2["expand"] * mamba2["hidden_size"]


def record(output: str, seconds: float, rss: int, **extra) -> dict:
    return {"output": output, "command": output, "seconds": seconds, "peak_rss_bytes": rss, **extra}


def test_conversion_chains_add_up_and_a_failed_step_drops_only_what_needs_it():
    records = {
        "edgelin export fp32": record("fp32", 10, 700), "edgelin quantize int8": record("int8", 20, 900),
        "edgelin quantize int4": record("int4", 5, 800), "edgelin compile fp32": record("fp32", 3, 100),
        "edgelin compile int8": record("int8", 4, 100), "edgelin compile int4": {"error": "no"},
        "llama.cpp convert fp32": record("f32.gguf", 6, 500), "llama.cpp quantize int8": record("q8.gguf", 1, 50),
    }
    targets, costs = bench.targets_and_costs(records)
    assert targets["int8"] == {"ort": "int8", "openvino-stateful": "int8", "llama.cpp": "q8.gguf"}
    assert targets["int4"] == {"ort": "int4"}  # no compile, no Q4_0
    assert costs["int8 openvino-stateful"]["seconds"] == 34 and costs["int8 openvino-stateful"]["peak_rss_bytes"] == 900
    assert costs["int8 llama.cpp"] == {"seconds": 7, "peak_rss_bytes": 500, "steps": ["f32.gguf", "q8.gguf"]}


def run(model: str, prec: str, engine: str, rnd: int, tok_s: float, **extra) -> dict:
    return {"model": model, "precision": prec, "engine": engine, "round": rnd, "decode_tokens_per_s": tok_s,
            "prefill_tokens_per_s": 2 * tok_s, "ttft_s": 0.1, "load_s": 1.0, "peak_rss_bytes": 2 ** 30, **extra}


def test_table_and_json_hold_medians_and_per_round_ratios():
    runs = [run("m", "int8", "ort", 0, 40), run("m", "int8", "llama.cpp", 0, 100),
            run("m", "int8", "openvino-stateful", 0, 90), run("m", "int8", "ort", 1, 60),
            run("m", "int8", "llama.cpp", 1, 50), run("m", "int8", "openvino-stateful", 1, 60),
            run("m", "fp32", "ort", 0, 10, tokens=[1, 2, 3]), run("m", "fp32", "llama.cpp", 0, 10, tokens=[1, 2, 4]),
            run("g", "fp32", "ort", 0, 10), run("g", "int8", "ort", 0, 30)]
    costs = {"m int8 llama.cpp": {"seconds": 7.0, "peak_rss_bytes": 2 ** 29}}
    rows = bench.summarize(runs, costs, {"m int8 ort": 3 * 2 ** 20, "m int8 llama.cpp": 2 ** 20})
    decode = next(r for r in rows if (r["model"], r["precision"], r["metric"]) == ("m", "int8", "decode_tokens_per_s"))
    assert decode["values"] == {"ort": 50, "openvino-stateful": 75, "llama.cpp": 75}
    assert decode["ratios"]["ort"] == pytest.approx((0.4 + 1.2) / 2)  # per round, then the median
    assert decode["ratios"]["openvino-stateful"] == pytest.approx((0.9 + 1.2) / 2)
    size = next(r for r in rows if (r["model"], r["precision"], r["metric"]) == ("m", "int8", "size_bytes"))
    assert size["values"] == {"ort": 3, "llama.cpp": 1} and size["ratios"] == {"ort": 3}
    zoo = next(r for r in rows if (r["model"], r["precision"], r["metric"]) == ("g", "int8", "decode_tokens_per_s"))
    assert zoo["reference"] == "edgelin fp32" and zoo["ratios"] == {"ort": 3}
    agree = bench.agreement(runs, {"m": [1, 2, 3]})
    assert agree == {"m": {"ort": "3/3", "llama.cpp": "2/3"}}
    table = bench.markdown(rows, agree, {"m": "Model M"})
    lines = table.splitlines()
    assert lines[0].startswith("| model | precision | measure |") and len({ln.count("|") for ln in lines}) == 1
    assert "| Model M | INT8 | decode tok/s | 50.0 | 75.0 | Q8_0 75.0 | 0.80 | 1.05 |" in lines
    assert "| g | INT8 | decode tok/s | 30.0 | - | - | 3.00 (vs FP32) | 3.00 (vs FP32) |" in lines
    assert "| Model M | FP32 | greedy tokens equal to transformers | 3/3 | - | 2/3 | | |" in lines
    json.dumps(rows)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_small_end_to_end_against_llama_cpp(tmp_path):
    sdist = ["--llama-sdist", os.environ["LLAMA_CPP_SDIST"]] if os.environ.get("LLAMA_CPP_SDIST") else []
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--models", "mamba2-130m", "--rounds", "1",
                           "--engines", "ort", "llama.cpp", "--precisions", "fp32", "--decode-tokens", "8",
                           "--prefill-tokens", "64", "--work", str(tmp_path / "work"), "--out", str(tmp_path), *sdist],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["runs"]) == 2 and not [r for r in result["runs"] if "error" in r]
    assert result["agreement"]["mamba2-130m"] == {"ort": "8/8", "llama.cpp": "8/8"}
    assert result["conversions"]["mamba2-130m fp32 llama.cpp"]["peak_rss_bytes"] > 0
    (decode,) = [r for r in result["summary"] if r["metric"] == "decode_tokens_per_s"]
    assert decode["precision"] == "fp32" and decode["ratios"]["ort"] > 0
    assert "| Mamba2-130M (small) | FP32 | decode tok/s |" in proc.stdout
