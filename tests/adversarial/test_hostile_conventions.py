"""Hostile conventions: a checkpoint's generation_config.json, tokenizer_config.json and chat templates, a
package's `tokenizer` and `generation` fields, and chat templates that attack the renderer. Every one ends
in a one-line EdgelinError naming the file and the field, or the template, quickly; nothing else escapes."""
import json
import os
import sys
import time

import pytest

from edgelin.errors import EdgelinError
from edgelin.models.hf_conventions import read_conventions
from edgelin.runtime import ChatTemplate, Session
from edgelin.runtime.schema import MAX_TEMPLATE_CHARS

VOCAB = 100
TOKENIZER = {"model": {"type": "BPE", "vocab": {chr(97 + i): i for i in range(20)}},
             "added_tokens": [{"id": 90, "content": "<s>", "special": True}, {"id": 91, "content": "</s>", "special": True}]}


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(EdgelinError) as e:
        fn(*args, **kw)
    message = str(e.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def source(tmp_path):
    """A checkpoint directory holding only a tokenizer.json; read(...) reads its conventions."""
    (tmp_path / "tokenizer.json").write_text(json.dumps(TOKENIZER))
    return tmp_path


def read(path):
    return read_conventions(path, {}, VOCAB, path / "tokenizer.json")


GENERATION = [
    ({"eos_token_id": "2"}, "eos_token_id"), ({"eos_token_id": VOCAB}, "eos_token_id"),
    ({"eos_token_id": []}, "eos_token_id"), ({"eos_token_id": [1, "x"]}, "eos_token_id[1]"),
    ({"eos_token_id": list(range(65))}, "eos_token_id"), ({"eos_token_id": [1, -1]}, "eos_token_id[1]"),
    ({"pad_token_id": -1}, "pad_token_id"), ({"bos_token_id": True}, "bos_token_id"),
    ({"bos_token_id": 2 ** 70}, "bos_token_id"), ({"eos_token_id": {"a": 1}}, "eos_token_id"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": -1}, "temperature"),
    ({"temperature": "0.7"}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2 ** 40}, "max_new_tokens"),
    ({"max_length": "9"}, "max_length"), ({"do_sample": "yes"}, "do_sample"),
]
TOKENIZER_CONFIG = [
    ({"eos_token": 5}, "eos_token"), ({"eos_token": {"content": 5}}, "eos_token"), ({"bos_token": ""}, "bos_token"),
    ({"eos_token": "<|nope|>"}, "is not a token of"), ({"pad_token": "x" * 5000}, "pad_token"),
    ({"add_bos_token": "true"}, "add_bos_token"), ({"chat_template": 5}, "chat_template"),
    ({"chat_template": ""}, "chat_template"), ({"chat_template": "a\0b"}, "chat_template"),
    ({"chat_template": "x" * (MAX_TEMPLATE_CHARS + 1)}, "chat_template"),
    ({"chat_template": ["x"]}, "chat_template[0]"), ({"chat_template": [{"name": 1, "template": "x"}]}, "chat_template[0].name"),
    ({"chat_template": [{"name": "d", "template": 7}]}, "chat_template[0].template"), ({"chat_template": []}, "chat_template"),
    ({"chat_template": [{"name": f"t{i}", "template": "x"} for i in range(17)]}, "chat_template"),
]


@pytest.mark.parametrize("doc, key", GENERATION, ids=[f"{d}"[:40] for d, _ in GENERATION])
def test_bad_generation_config(source, doc, key):
    (source / "generation_config.json").write_text(json.dumps(doc))
    message = one_line_error(read, source)
    assert "generation_config.json" in message and key in message


@pytest.mark.parametrize("doc, key", TOKENIZER_CONFIG, ids=[f"{d}"[:40] for d, _ in TOKENIZER_CONFIG])
def test_bad_tokenizer_config(source, doc, key):
    (source / "tokenizer_config.json").write_text(json.dumps(doc))
    message = one_line_error(read, source)
    assert "tokenizer_config.json" in message and key in message


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json"])
@pytest.mark.parametrize("content, fragment", [("[]", "JSON object"), ("{", "not valid JSON"),
                                               ("[" * 100 + "]" * 100, "nests deeper"), (None, "over the limit")])
def test_bad_config_files(source, name, content, fragment):
    path = source / name
    if content is None:  # 100 MB, sparse: refused by its size, before it is read
        with open(path, "wb") as f:
            f.truncate(100 << 20)
    else:
        path.write_text(content)
    message = one_line_error(read, source)
    assert name in message and fragment in message


def test_bad_template_files(source):
    path = source / "chat_template.jinja"
    with open(path, "wb") as f:
        f.truncate(100 << 20)
    assert "over the limit" in one_line_error(read, source)
    path.write_bytes(b"{{ '\xff' }}")
    assert "not UTF-8" in one_line_error(read, source)
    path.unlink()
    path.symlink_to("/dev/zero")  # an endless file behind a link
    assert "not a regular file" in one_line_error(read, source)
    path.unlink()
    (source / "additional_chat_templates").mkdir()
    for i in range(17):
        (source / "additional_chat_templates" / f"t{i}.jinja").write_text("x")
    assert "17 chat templates" in one_line_error(read, source)


BIG = "x" * (MAX_TEMPLATE_CHARS + 1)
NAMED = {f"t{i}": "x" for i in range(17)}
MANIFEST = [
    ("eos_ids", "3"), ("eos_ids", []), ("eos_ids", [300]), ("eos_ids", [1.5]), ("eos_ids", [True]),
    ("eos_ids", list(range(65))), ("eos_ids", [4]), ("pad_id", 256), ("pad_id", -1), ("add_bos", "yes"),
    ("add_bos", 1), ("special_tokens", "x"), ("special_tokens", {"bos": "a"}), ("special_tokens", {"bos_token": 5}),
    ("special_tokens", {"bos_token": ""}), ("special_tokens", {"bos_token": "a\0"}), ("chat_template", 5),
    ("chat_template", ""), ("chat_template", "a\0"), ("chat_template", BIG), ("chat_template", {}),
    ("chat_template", {"default": 5}), ("chat_template", {"": "x"}), ("chat_template", NAMED),
    ("chat_template", ["x"]), ("chat_template", {"default": BIG}),
]
GENERATION_FIELD = ["x", [], {"temperature": float("nan")}, {"temperature": -1}, {"temperature": "0.7"},
                    {"temperature": True}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"top_k": 1.5},
                    {"max_new_tokens": 0}, {"max_new_tokens": 2 ** 40}, {"max_length": "9"}]


@pytest.mark.parametrize("key, value", MANIFEST, ids=[f"{k}={v!r:.30}" for k, v in MANIFEST])
def test_bad_tokenizer_fields(copy_pkg, key, value):
    pkg = copy_pkg(lambda d: d["tokenizer"].update({"eos_id": 3, key: value}))
    assert "tokenizer" in one_line_error(Session, pkg, threads=1)


@pytest.mark.parametrize("value", GENERATION_FIELD, ids=[f"{v!r:.30}" for v in GENERATION_FIELD])
def test_bad_generation_field(copy_pkg, value):
    pkg = copy_pkg(lambda d: d.update(generation=value))
    assert "generation" in one_line_error(Session, pkg, threads=1)


TEMPLATES = [  # what a template may try, and what the refusal says
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "did not finish"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "did not finish"),
    ("{% for i in range(99999) %}{{ 'x' * 99999 }}{% endfor %}", "output over"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox forbids"),
    ("{{ self.__init__.__globals__ }}", "sandbox forbids"),
    ("{{ cycler.__init__.__globals__.os.system('id') }}", "sandbox forbids"),
    ("{{ namespace.__init__.__globals__ }}", "sandbox forbids"),
    ("{% set ns = namespace(_hidden=1) %}", "sandbox forbids"),
    ("{{ messages.append(1) }}", "sandbox forbids"),
    ("{{ 'a' * 10 ** 10 }}", "repeats"),
    ("{{ 9 ** 999999999 }}", "power"), ("{{ 10 ** (messages | length * 100000) }}", "power"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "characters"),
    ("{% set ns = namespace(s=[1]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", "characters"),
    ("{% set s = 'x' * 4000000 %}{{ [s, s, s] | join }}", "characters"),
    ("{{ 'x'.center(10 ** 9) }}", "number"), ("{{ 'x' | indent(10 ** 9) }}", "number"),
    ("{{ '%999999999d' % 1 }}", "width"), ("{{ '{:>999999999}'.format(1) }}", "width"),
    ("{{ raise_exception('only user and assistant roles') }}", "refused the conversation: only user"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ("{{ lipsum(10 ** 6) }}", "undefined"), ("{{ messages[0].content.nope.deeper }}", "UndefinedError"),
    ("{% for %}", "not a valid Jinja template"), ("{{ 1 / 0 }}", "ZeroDivisionError"),
]


@pytest.mark.parametrize("source, fragment", TEMPLATES, ids=[s[:40] for s, _ in TEMPLATES])
def test_hostile_templates(source, fragment):
    pytest.importorskip("jinja2")
    tracer = sys.gettrace()
    start = time.perf_counter()
    message = one_line_error(lambda: ChatTemplate(source).render([{"role": "user", "content": "hi"}]))
    assert fragment in message and time.perf_counter() - start < 20, message
    assert sys.gettrace() is tracer  # the step counter is gone


@pytest.mark.parametrize("source", [5, None, b"{{ x }}", "", "a\0b", "x" * (MAX_TEMPLATE_CHARS + 1)])
def test_templates_that_are_not_bounded_strings(source):
    assert "template" in one_line_error(ChatTemplate, source)


def test_messages_are_plain_data():
    pytest.importorskip("jinja2")
    template = ChatTemplate("{{ messages | tojson }}")
    assert template.render([{"role": "user", "content": "hi", "name": None}]) == '[{"role": "user", "content": "hi"}]'
    for bad in ("hi", [1], [{"role": "user", "content": os}], {"a": 1}):
        one_line_error(template.render, bad)
    deep: list = []
    for _ in range(40):
        deep = [deep]
    assert "nests deeper" in one_line_error(template.render, [{"role": "user", "content": deep}])


def test_the_limits_leave_ordinary_content_alone():
    """Message text that looks like a wide format, or a big number in the data, is just data."""
    pytest.importorskip("jinja2")
    content = "pay %9999999d or {:>99999999} now; 10000000000 is a number"
    template = ChatTemplate("{{ messages[0].content.strip() | trim }}{{ messages[0].n | string }}"
                            "{{ '%s!' % messages[0].content[:3] }}{{ '{}?'.format(messages[0].n) }}")
    assert template.render([{"role": "user", "content": content, "n": 10 ** 10}]) == \
        content + "10000000000pay!10000000000?"
