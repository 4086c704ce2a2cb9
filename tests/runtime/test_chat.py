"""The runtime's chat: the package's template renders what transformers' apply_chat_template renders (and
onnxruntime-genai's and OpenVINO GenAI's tokenizers too), each turn feeds only the new tokens, special
tokens stay out of text, every eos id stops, and the package's sampling defaults apply."""
import json

import numpy as np
import pytest

from edgelin.errors import EdgelinError
from edgelin.runtime import Chat, ChatTemplate, SamplingConfig, Session, generate, generate_text, load_tokenizer
from edgelin.runtime import package_sampling
from hf_checkpoint import EOT, IM_END, IM_START, chat_package

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

CONVERSATION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return chat_package(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return chat_package(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def hf(checkpoint):
    return transformers.AutoTokenizer.from_pretrained(checkpoint)


def hf_ids(hf, messages, **kw):
    return hf(hf.apply_chat_template(messages, tokenize=False, **kw), add_special_tokens=False)["input_ids"]


def scripted(session, replies):
    """Make `session`'s model say `replies` (lists of token ids, one per turn, in order): each step's logits are
    replaced by a one-hot on the script's next token; the states are the model's own. Returns every id fed."""
    forward, script, fed = session.forward, [t for reply in replies for t in reply], []

    def run(ids, state, logits="all", donate=False):
        fed.extend(np.asarray(ids)[0].tolist())
        out, state = forward(ids, state, logits, donate)
        forced = np.full_like(out, -30.0)
        forced[..., script.pop(0) if script else 0] = 30.0
        return forced, state

    session.forward = run
    return fed


def test_renders_as_transformers_and_the_genai_runtimes(package, hf):
    template = ChatTemplate.from_manifest(Session(package).manifest)
    tokenizer = load_tokenizer(package, Session(package).manifest)
    for messages, prompt in ((CONVERSATION, True), (CONVERSATION[1:3], False)):
        text = template.render(messages, add_generation_prompt=prompt)
        assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert tokenizer.encode(text) == hf_ids(hf, messages, add_generation_prompt=prompt)
    og = pytest.importorskip("onnxruntime_genai")
    genai = og.Tokenizer(og.Model(str(package)))
    text = genai.apply_chat_template(json.dumps(CONVERSATION), add_generation_prompt=True)
    assert text == template.render(CONVERSATION) and list(genai.encode(text)) == tokenizer.encode(text)


def test_openvino_genai_tokenizer_renders_it_too(package, tmp_path):
    ov_genai = pytest.importorskip("openvino_genai")
    ov = pytest.importorskip("openvino")
    from edgelin.exporters.genai import hf_tokenizer_config
    from edgelin.exporters.openvino_genai import DETOKENIZER_IR, TOKENIZER_IR, hf_tokenizer_models

    spec = Session(package).manifest.tokenizer
    for model, name in zip(hf_tokenizer_models(package / "tokenizer.json", hf_tokenizer_config(package / "tokenizer.json", spec)),
                           (TOKENIZER_IR, DETOKENIZER_IR)):
        ov.save_model(model, str(tmp_path / name))
    tokenizer = ov_genai.Tokenizer(str(tmp_path))
    text = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert text == ChatTemplate.from_manifest(Session(package).manifest).render(CONVERSATION)
    assert tokenizer.encode(text, add_special_tokens=False).input_ids.data.tolist() == \
        [load_tokenizer(package, Session(package).manifest).encode(text)]


def test_each_turn_feeds_only_the_new_tokens(package, hf):
    """Two turns: what the model was fed is transformers' ids of the whole conversation, and the state is the
    one a fresh session reaches on them, though the second turn fed only its own tokens."""
    session = Session(package, threads=1)
    tokenizer = load_tokenizer(package, session.manifest)
    replies = [tokenizer.encode("Paris."), tokenizer.encode("Fine, thanks.")]
    fed = scripted(session, [replies[0] + [IM_END], replies[1] + [IM_END]])
    chat = Chat(session, system="Answer briefly.", max_new_tokens=20)
    assert "".join(chat.send("What is the capital of France?")) == "Paris."
    assert fed == hf_ids(hf, CONVERSATION[:2], add_generation_prompt=True) + replies[0]
    first = len(fed)
    assert "".join(chat.send("Hello there, how are you?")) == "Fine, thanks."
    assert chat.messages == [*CONVERSATION, {"role": "assistant", "content": "Fine, thanks."}]
    assert chat.restarts == 0 and fed[first] == IM_END  # the end token of turn 1, fed with turn 2
    assert fed + chat._pending == hf_ids(hf, CONVERSATION, add_generation_prompt=True) + replies[1] + [IM_END]
    fresh = Session(package, threads=1)
    _, state = fresh.forward(np.array([fed]), fresh.new_state(1))
    assert all(np.allclose(state[k], chat.state[k], atol=1e-5) for k in state)


def test_a_template_that_rewrites_history_starts_over(package):
    session = Session(package, threads=1)
    tokenizer = load_tokenizer(package, session.manifest)
    fed = scripted(session, [tokenizer.encode("Paris.") + [IM_END], tokenizer.encode("Fine.") + [IM_END]])
    chat = Chat(session, max_new_tokens=20)
    chat.template = ChatTemplate("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | upper }}<|im_end|>\n"
                                 "{% endfor %}<|im_start|>assistant\n")
    list(chat.send("Capital of France?"))
    turn = len(fed)
    list(chat.send("Thanks"))
    assert chat.restarts == 1  # PARIS. is not what the model said: the whole conversation again, from zero
    assert tokenizer.decode(fed[turn:], skip_special_tokens=False).startswith("<|im_start|>user\nCAPITAL OF FRANCE?")
    fresh = Session(package, threads=1)
    _, state = fresh.forward(np.array([fed[turn:]]), fresh.new_state(1))
    assert all(np.allclose(state[k], chat.state[k], atol=1e-5) for k in state)


def test_a_reply_closed_early_stays_in_the_conversation(package):
    session = Session(package, threads=1)
    tokenizer = load_tokenizer(package, session.manifest)
    first = tokenizer.encode(" Paris")[:1]
    scripted(session, [first, tokenizer.encode("Yes.") + [IM_END]])  # the reply is closed after one token
    chat = Chat(session, max_new_tokens=20)
    reply = chat.send("Capital of France?")
    next(reply)
    reply.close()
    assert chat.messages[-1] == {"role": "assistant", "content": tokenizer.decode(first)}
    assert "".join(chat.send("Sure?")) == "Yes." and chat.restarts == 0
    chat.reset()
    assert chat.messages == [] and chat._seen == ""


def test_special_tokens_stay_out_of_text_and_every_eos_stops(package):
    session = Session(package, threads=1)
    tokenizer = load_tokenizer(package, session.manifest)
    ids = [IM_START, *tokenizer.encode("Paris"), IM_END, EOT]
    assert tokenizer.decode(ids) == "Paris"
    assert load_tokenizer(package, session.manifest, skip_special_tokens=False).decode(ids) == \
        "<|im_start|>Paris<|im_end|><|endoftext|>"
    scripted(session, [[IM_START, *tokenizer.encode("Paris"), EOT, *tokenizer.encode(" more")]])
    assert "".join(generate_text(session, tokenizer, "Capital?", 20)) == "Paris"  # <|endoftext|> is an eos too


def test_the_package_sampling_defaults_apply(package):
    """generation_config.json: do_sample, temperature 0.7, top_p 0.9 (top_k: transformers' 50)."""
    session = Session(package, threads=1)
    want = SamplingConfig(temperature=0.7, top_k=50, top_p=0.9)
    assert package_sampling(session.manifest) == want
    assert package_sampling(session.manifest, temperature=0) == SamplingConfig(0, 50, 0.9)
    assert list(generate(session, [5, 6, 7], 12, seed=3)) == list(generate(session, [5, 6, 7], 12, want, seed=3))
    search = json.loads((package / "genai_config.json").read_text())
    assert search["model"]["eos_token_id"] == [IM_END, EOT]
    assert {k: search["search"][k] for k in ("do_sample", "temperature", "top_k", "top_p")} == \
        {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9}
    from edgelin.exporters.openvino_genai import generation_config  # OpenVINO GenAI's generation_config.json

    assert generation_config(session.manifest.raw) == {"bos_token_id": 1, "eos_token_id": [IM_END, EOT], "pad_token_id": 0,
                                                       "do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9}


def test_byte_packages_have_no_template(toy_package):
    with pytest.raises(EdgelinError, match="no chat template: it is a byte-level package"):
        Chat(Session(toy_package))


def test_jinja2_only_when_a_template_is_used(monkeypatch):
    """`edgelin.runtime` imports without jinja2; a template without it is one line naming the extra."""
    import subprocess
    import sys

    from edgelin.runtime import chat_template

    code = "import sys, edgelin.runtime; assert 'jinja2' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    chat_template._environment.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(EdgelinError, match=r"need jinja2, which is not installed: pip install 'edgelin\[tokenizers\]'"):
        ChatTemplate("{{ 1 }}")
