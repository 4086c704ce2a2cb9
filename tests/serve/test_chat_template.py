"""/v1/chat/completions renders messages with the package's chat template (an imported chat model):
the prompt equals transformers' apply_chat_template, with checkpoints where messages end, and the
server's reply equals the runtime's greedy reply."""
import pytest

from edgelin.runtime import ChatTemplate, SamplingConfig, Session, generate, load_tokenizer
from edgelin.serve.chat import Message, encode_chat
from hf_checkpoint import chat_package
from serve_helpers import MODEL, request, running_server

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
SHORT = [{"role": "user", "content": "Hi?"}]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return chat_package(tmp_path_factory)


def test_prompt_is_the_template_rendering_with_checkpoints_at_message_ends(chat):
    checkpoint, package = chat
    session = Session(package, threads=1)
    tok = load_tokenizer(package, session.manifest)
    ids, ends = encode_chat(tok, [Message(**m) for m in MESSAGES], ChatTemplate.from_manifest(session.manifest))
    hf = transformers.AutoTokenizer.from_pretrained(checkpoint)
    assert ids == hf(hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    assert ends and all(0 < e < len(ids) for e in ends) and ends == sorted(ends)


def test_server_replies_in_the_template(chat):
    """(The package's context is 64 tokens: a short conversation.)"""
    _, package = chat
    session = Session(package, threads=1)
    tok = load_tokenizer(package, session.manifest)
    ids, _ = encode_chat(tok, [Message(**m) for m in SHORT], ChatTemplate.from_manifest(session.manifest))
    stop = set(getattr(tok, "eos_ids", None) or [tok.eos_id])
    want = tok.decode(list(generate(session, ids, 12, SamplingConfig(temperature=0.0), stop_ids=stop)))
    with running_server(package) as (url, _):
        status, body = request(url, "POST", "/v1/chat/completions",
                               {"model": MODEL, "messages": SHORT, "max_tokens": 12, "temperature": 0})
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == want
        assert request(url, "GET", "/health")[0] == 200
