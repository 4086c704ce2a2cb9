"""An imported checkpoint with a tokenizer.json becomes a package like a native one: the tokenizer
ships, text generation works, and the INT8 pipeline (calibrate, quantize, validate) runs on it."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from edgelin.exporters.package import export_package  # noqa: E402
from edgelin.inspect import inspect_package  # noqa: E402
from edgelin.models.loading import load_model  # noqa: E402
from edgelin.runtime import Session  # noqa: E402
from edgelin.runtime.generate import generate_text  # noqa: E402
from edgelin.runtime.package import read_package  # noqa: E402
from edgelin.runtime.tokenizer import load_tokenizer  # noqa: E402

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, state_size=8,
        n_groups=1, expand=2))
    path = tmp_path_factory.mktemp("hf") / "mamba2-bpe"
    hf.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    loaded = load_model(str(checkpoint))
    assert loaded.tokenizer_json == checkpoint / "tokenizer.json"
    return export_package(loaded.model, tmp_path_factory.mktemp("pkg") / "fp32", prefill_tokens=16,
                          source_layout=loaded.source_layout, tokenizer_json=loaded.tokenizer_json)


def test_package_ships_tokenizer_and_generates_text(package):
    info = inspect_package(package)
    assert info["source_layout"] == "hf-mamba2"
    assert info["tokenizer"] == {"type": "tokenizers", "file": "tokenizer.json"}
    session = Session(package, threads=2)
    tokenizer = load_tokenizer(package, read_package(package))
    text = "".join(generate_text(session, tokenizer, "To be, or", max_new_tokens=12))
    assert isinstance(text, str) and text


def test_int8_pipeline_runs_on_an_imported_model(package, tmp_path):
    from edgelin.quantize.pipeline import run_pipeline
    from edgelin.quantize.schemes import scheme_by_name

    scheme = scheme_by_name("int8")
    result = run_pipeline(package, tmp_path / "int8", scheme, TEXT, streams=2, tokens=256, horizon=256, eval_streams=2)
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert manifest["source_layout"] == "hf-mamba2" and manifest["tokenizer"]["type"] == "tokenizers"
    assert manifest["precision"]["scheme"] != "fp32"
    assert (tmp_path / "int8" / "report").is_dir()
    assert result["top1_agreement"] > 0.9, result["top1_agreement"]
