"""A checkpoint's conventions are read as transformers reads them: generation_config.json over config.json,
tokenizer_config.json's special tokens and chat template, chat_template.jinja over it, the BOS from
tokenizer.json's post-processor; and they reach the manifest."""
import json

import pytest

from edgelin.models.hf_conventions import read_conventions
from edgelin.models.loading import load_model
from hf_checkpoint import BOS, CHATML, EOT, IM_END, PAD, make_checkpoint

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hf") / "chat")


def conventions(path):
    config = json.loads((path / "config.json").read_text())
    return read_conventions(path, config, config["vocab_size"], path / "tokenizer.json")


def test_what_the_manifest_gets(checkpoint):
    found = conventions(checkpoint)
    assert found.tokenizer == {
        "add_bos": True, "bos_id": BOS, "eos_id": IM_END, "eos_ids": [IM_END, EOT], "pad_id": PAD,
        "special_tokens": {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"},
        "chat_template": CHATML}
    # do_sample without top_k: transformers' top_k of 50
    assert found.generation == {"temperature": 0.7, "top_k": 50, "top_p": 0.9}
    loaded = load_model(str(checkpoint))
    assert (loaded.special_tokens, loaded.generation) == (found.tokenizer, found.generation)


def test_same_as_transformers(checkpoint):
    """The stop ids are GenerationConfig's, the prompt's BOS the tokenizer's, the template and its tokens too."""
    from edgelin.runtime.tokenizer import HFTokenizer, encode_prompt

    found = conventions(checkpoint)
    config = transformers.GenerationConfig.from_pretrained(checkpoint)
    assert found.tokenizer["eos_ids"] == config.eos_token_id and found.tokenizer["pad_id"] == config.pad_token_id
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert found.tokenizer["chat_template"] == hf.chat_template
    assert found.tokenizer["special_tokens"] == hf.special_tokens_map
    own = HFTokenizer(checkpoint / "tokenizer.json")
    own.bos_id, own.add_bos = found.tokenizer["bos_id"], found.tokenizer["add_bos"]
    for text in ("Hello there", "Fine, thanks."):
        assert encode_prompt(own, text) == hf(text)["input_ids"]


def test_generation_config_over_config_json(tmp_path):
    found = read_conventions(tmp_path, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}, 100, None)
    assert found.tokenizer == {"bos_id": 1, "eos_id": 2, "eos_ids": [2], "pad_id": 3} and found.generation == {}
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [9, 8, 9], "max_new_tokens": 30, "temperature": 0.5, "do_sample": False}))
    found = read_conventions(tmp_path, {"bos_token_id": 1, "eos_token_id": 2}, 100, None)
    assert found.tokenizer == {"bos_id": 1, "eos_id": 9, "eos_ids": [9, 8]}
    assert found.generation == {"temperature": 0.0, "max_new_tokens": 30}  # do_sample false: greedy, as transformers


def test_templates_in_files_win_and_named_templates(tmp_path):
    """transformers 5 keeps templates in chat_template.jinja and additional_chat_templates/NAME.jinja;
    older checkpoints list named ones in tokenizer_config.json."""
    path = make_checkpoint(tmp_path / "files", template_file="{{ messages[0]['content'] }}")
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    (path / "additional_chat_templates").mkdir()
    (path / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools | tojson }}")
    assert conventions(path).tokenizer["chat_template"] == {"default": "{{ messages[0]['content'] }}",
                                                            "tool_use": "{{ tools | tojson }}"}
    hf = transformers.AutoTokenizer.from_pretrained(path)
    assert hf.chat_template == conventions(path).tokenizer["chat_template"]
    (path / "chat_template.jinja").unlink()
    (path / "additional_chat_templates" / "tool_use.jinja").unlink()
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": "a"}, {"name": "rag", "template": "b"}]}))
    assert conventions(path).tokenizer["chat_template"] == {"default": "a", "rag": "b"}


def test_bos_only_where_the_tokenizer_adds_one(tmp_path):
    """No post-processor: add_bos_token decides (false by default); the ids stay for the GenAI runtimes."""
    path = make_checkpoint(tmp_path / "plain", generation=None)
    doc = json.loads((path / "tokenizer.json").read_text())
    doc["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(doc))
    found = conventions(path)
    assert found.tokenizer["add_bos"] is False and found.tokenizer["bos_id"] == BOS and found.generation == {}
    assert found.tokenizer["eos_ids"] == [IM_END]  # config.json's, without a generation_config.json
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    assert conventions(path).tokenizer["add_bos"] is True
