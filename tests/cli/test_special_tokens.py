"""Packages of imported models carry bos/eos ids: prompts start with bos, generation stops at eos."""
import numpy as np

from edgelin.exporters.package import export_package
from edgelin.models import LM, ZOO
from edgelin.models.hf_conventions import read_conventions
from edgelin.runtime import GREEDY, Session, encode_prompt, generate, generate_text, load_tokenizer


def test_special_tokens_from_config(tmp_path):
    assert read_conventions(tmp_path, {"bos_token_id": 1, "eos_token_id": [7, 9]}, 256, None).tokenizer == \
        {"bos_id": 1, "eos_id": 7, "eos_ids": [7, 9]}
    assert read_conventions(tmp_path, {"bos_token_id": None, "eos_token_id": 300}, 256, None).tokenizer == {}


def test_bos_prepended_and_eos_stops(tmp_path):
    model = LM(ZOO["gla-tiny"]).init_weights()
    plain = export_package(model, tmp_path / "plain", prefill_tokens=4)
    session = Session(plain)
    prompt = "ab"
    # The greedy token after [bos] + prompt becomes eos, so generation must stop before yielding it.
    first = next(iter(generate(session, [1, *prompt.encode()], 1, GREEDY)))
    pkg = export_package(model, tmp_path / "special", prefill_tokens=4, special_tokens={"bos_id": 1, "eos_id": first})
    session = Session(pkg)
    tokenizer = load_tokenizer(pkg, session.manifest)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, first)
    assert encode_prompt(tokenizer, prompt) == [1, *prompt.encode()]
    assert encode_prompt(tokenizer, "") == []
    assert "".join(generate_text(session, tokenizer, prompt, 8, GREEDY)) == ""
    assert np.array(list(generate(session, list(prompt.encode()), 3, GREEDY))).size == 3
