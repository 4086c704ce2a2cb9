"""What a Hugging Face checkpoint keeps beside its weights about using it, read for the package's manifest.

The files transformers reads, with its precedence:

- `generation_config.json`, over `config.json` (whose ids are the fallback, as transformers builds a
  generation config from the model's when the file is absent): the bos / eos / pad token ids (eos may
  be a list: every one ends generation) and the sampling defaults (do_sample, temperature, top_k,
  top_p, max_new_tokens, max_length);
- `tokenizer_config.json`: the special tokens (strings or AddedToken objects), `add_bos_token`, and
  `chat_template` (a string, or a list of named templates);
- `chat_template.jinja` and `additional_chat_templates/NAME.jinja`: the templates newer checkpoints keep
  as files; they take precedence over tokenizer_config.json's;
- `tokenizer.json`: token strings to ids, and whether its post-processor starts every text with a BOS
  (transformers 5 follows the post-processor and ignores `add_bos_token` when there is one).

Every file is read as a stranger's: bounded in size and depth, every field checked by type and range;
a bad one is one EdgelinError naming the file and the key. Fields edgelin does not use (repetition
penalties, beams, ...) are not read.

Example:
    >>> c = read_conventions(Path("lfm2-350m"), config, 65536, Path("lfm2-350m/tokenizer.json"))  # doctest: +SKIP
    >>> c.tokenizer["eos_ids"], c.generation  # doctest: +SKIP
    ([7], {'temperature': 0.3, 'top_k': 50, 'top_p': 1.0})
"""
from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelin.errors import EdgelinError
from edgelin.runtime.schema import (
    MAX_EOS_IDS, MAX_NEW_TOKENS, MAX_TEMPLATE_CHARS, MAX_TEMPLATES, Checker, check_template, read_json_file, short,
)

GENERATION_CONFIG, TOKENIZER_CONFIG = "generation_config.json", "tokenizer_config.json"
TEMPLATE_FILE, TEMPLATE_DIR = "chat_template.jinja", "additional_chat_templates"
MAX_CONFIG_BYTES = 16 << 20  # tokenizer_config.json lists every added token; a few MiB for the largest vocabularies
MAX_TOKENIZER_BYTES = 1 << 30
HF_TOP_K = 50  # transformers' top_k when a config samples without naming one
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class Conventions:
    """The manifest fields a checkpoint's conventions give (docs/FORMAT.md).

    Attributes:
        tokenizer: `tokenizer` fields: bos_id, eos_id, eos_ids, pad_id, add_bos, special_tokens,
            chat_template (each only when known).
        generation: the `generation` defaults; {} without a generation_config.json.
    """

    tokenizer: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)


class _Fields:
    """Typed reads of one JSON object from a file; `doc` is None when the file is absent."""

    def __init__(self, path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> None:
        self.path, self.c, self.doc = path, Checker(str(path)), None
        if path.exists():
            self.doc = read_json_file(path, max_bytes, missing=f"{path} vanished while being read")
            if type(self.doc) is not dict:
                raise EdgelinError(f"{path} must hold a JSON object, not {short(self.doc)}")

    def get(self, key: str) -> Any:
        return None if self.doc is None else self.doc.get(key)

    def ids(self, key: str, vocab: int) -> list[int]:
        """An id or a non-empty list of ids (transformers' eos_token_id), each in [0, vocab)."""
        v = self.get(key)
        if v is None:
            return []
        if type(v) is not list:
            return [self.c.integer(v, key, 0, vocab - 1)]
        if not 0 < len(v) <= MAX_EOS_IDS:
            self.c.fail(key, f"a token id or a list of 1 to {MAX_EOS_IDS} of them", v)
        return [self.c.integer(t, f"{key}[{i}]", 0, vocab - 1) for i, t in enumerate(v)]

    def flag(self, key: str) -> bool | None:
        v = self.get(key)
        if v is not None and type(v) is not bool:
            self.c.fail(key, "true or false", v)
        return v

    def integer(self, key: str, lo: int, hi: int) -> int | None:
        v = self.get(key)
        return None if v is None else self.c.integer(v, key, lo, hi)

    def number(self, key: str, lo: float, hi: float) -> float | None:
        v = self.get(key)
        if v is None:
            return None
        if not lo <= self.c.number(v, key) <= hi:
            self.c.fail(key, f"a number in [{lo}, {hi}]", v)
        return float(v)

    def token(self, key: str) -> str | None:
        """A special token: its string, or an AddedToken object {"content": ...}."""
        v = self.get(key)
        content = v.get("content") if type(v) is dict else v
        if v is not None and (type(content) is not str or not 0 < len(content) <= 1024 or "\0" in content):
            self.c.fail(key, "a token (a string or an AddedToken object with its content)", v)
        return content


class _Vocab:
    """tokenizer.json's token strings -> ids, and the id its post-processor puts before every text.

    Read leniently: the `tokenizers` library is the parser of record (the runtime loads the file with
    it); only the entries used here must be well-formed."""

    def __init__(self, path: Path) -> None:
        doc = read_json_file(path, MAX_TOKENIZER_BYTES, missing=f"{path} vanished while being read")
        doc = doc if type(doc) is dict else {}
        vocab = (doc.get("model") if type(doc.get("model")) is dict else {}).get("vocab")
        self.ids: dict[str, int] = {}
        if type(vocab) is dict:  # BPE, WordPiece, WordLevel
            self.ids = {k: v for k, v in vocab.items() if type(v) is int}
        elif type(vocab) is list:  # Unigram: [piece, score] at its id
            self.ids = {e[0]: i for i, e in enumerate(vocab) if type(e) is list and e and type(e[0]) is str}
        for t in doc.get("added_tokens") if type(doc.get("added_tokens")) is list else []:
            if type(t) is dict and type(t.get("content")) is str and type(t.get("id")) is int:
                self.ids[t["content"]] = t["id"]
        self.post_processor = doc.get("post_processor") is not None
        self.leading = _leading_special(doc.get("post_processor"))


def _leading_special(pp: Any) -> int | None:
    """The id a tokenizer.json post-processor puts before every single text (a BOS), if any."""
    if type(pp) is not dict:
        return None
    kind = pp.get("type")
    if kind == "Sequence":
        processors = pp.get("processors") if type(pp.get("processors")) is list else []
        return next((i for i in map(_leading_special, processors) if i is not None), None)
    if kind == "TemplateProcessing":
        single = pp.get("single")
        first = single[0] if type(single) is list and single and type(single[0]) is dict else {}
        name = first.get("SpecialToken", {}).get("id") if type(first.get("SpecialToken")) is dict else None
        specials = pp.get("special_tokens") if type(pp.get("special_tokens")) is dict else {}
        ids = specials.get(name, {}).get("ids") if type(specials.get(name)) is dict else None
        return ids[0] if type(ids) is list and ids and type(ids[0]) is int else None
    if kind in ("BertProcessing", "RobertaProcessing"):
        cls = pp.get("cls")
        return cls[1] if type(cls) is list and len(cls) == 2 and type(cls[1]) is int else None
    return None


def _config_ids(config: dict[str, Any], key: str, vocab: int) -> list[int]:
    """config.json's ids for `key`, those inside the vocabulary (config.json is read by the importers,
    which accept ids edgelin does not use)."""
    v = config.get(key)
    items = v if type(v) is list else [v]
    return [t for t in items if type(t) is int and 0 <= t < vocab]


def _read_template(path: Path) -> str:
    """A template file: a regular file (links followed, as in the hub cache) of bounded size, UTF-8."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise EdgelinError(f"{path} is not a regular file")
        if info.st_size > 4 * MAX_TEMPLATE_CHARS:
            raise EdgelinError(f"{path} is over the limit of {MAX_TEMPLATE_CHARS} characters for a chat template")
        with open(path, "rb") as f:
            text = f.read(4 * MAX_TEMPLATE_CHARS + 1).decode("utf-8")
    except OSError as e:
        raise EdgelinError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise EdgelinError(f"{path} is not UTF-8 text") from None
    return check_template(Checker(str(path)), text, "the template")


def _templates(directory: Path, tok: _Fields) -> dict[str, str]:
    """name -> chat template: the .jinja files when there are any, else tokenizer_config.json's."""
    files = {"default": directory / TEMPLATE_FILE} if (directory / TEMPLATE_FILE).exists() else {}
    if (directory / TEMPLATE_DIR).is_dir():
        files.update({p.stem: p for p in sorted((directory / TEMPLATE_DIR).glob("*.jinja"))})
    if len(files) > MAX_TEMPLATES:
        raise EdgelinError(f"{directory} has {len(files)} chat templates; at most {MAX_TEMPLATES} are read")
    if files:
        return {name: _read_template(path) for name, path in files.items()}
    v = tok.get("chat_template")
    if v is None:
        return {}
    if type(v) is str:
        return {"default": check_template(tok.c, v, "chat_template")}
    if type(v) is not list or not 0 < len(v) <= MAX_TEMPLATES:
        tok.c.fail("chat_template", f"a template or a list of 1 to {MAX_TEMPLATES} named templates", v)
    named = {}
    for i, entry in enumerate(v):
        where = f"chat_template[{i}]"
        if type(entry) is not dict:
            tok.c.fail(where, 'an object {"name": ..., "template": ...}', entry)
        named[tok.c.text(entry.get("name"), f"{where}.name", max_len=64)] = check_template(
            tok.c, entry.get("template"), f"{where}.template")
    return named


def _generation(gen: _Fields) -> dict[str, Any]:
    """generation_config.json's sampling defaults as the manifest's `generation` (temperature 0 = greedy,
    transformers' defaults where the file names none)."""
    if gen.doc is None:
        return {}
    do_sample = gen.flag("do_sample")
    temperature = gen.number("temperature", 0, 1e6)
    top_k = gen.integer("top_k", 0, MAX_NEW_TOKENS)
    top_p = gen.number("top_p", 0, 1)
    if top_p == 0:
        gen.c.fail("top_p", "a number in (0, 1]", gen.get("top_p"))
    out: dict[str, Any] = {"temperature": 0.0}
    if do_sample and temperature != 0:
        out = {"temperature": 1.0 if temperature is None else temperature,
               "top_k": HF_TOP_K if top_k is None else top_k, "top_p": 1.0 if top_p is None else top_p}
    for key in ("max_new_tokens", "max_length"):
        value = gen.integer(key, 1, MAX_NEW_TOKENS)
        if value is not None:
            out[key] = value
    return out


def read_conventions(directory: Path, config: dict[str, Any], vocab_size: int,
                     tokenizer_json: Path | None) -> Conventions:
    """The conventions of the checkpoint in `directory` (see the module's docstring).

    Args:
        directory: the checkpoint directory (a hub cache snapshot included).
        config: its config.json, already read (the fallback for the token ids).
        vocab_size: the model's vocabulary: every id must be inside it.
        tokenizer_json: the tokenizer.json the package ships, if any.
    Returns:
        The manifest's `tokenizer` fields and `generation` defaults.
    Raises:
        EdgelinError: a file that is too large, not JSON, or holds a field of the wrong type or range,
            a token tokenizer.json does not have, a chat template that is not a bounded string.
    """
    gen, tok = _Fields(directory / GENERATION_CONFIG), _Fields(directory / TOKENIZER_CONFIG)
    words = _Vocab(tokenizer_json) if tokenizer_json is not None else None
    # transformers' special tokens: the standard ones, and any other *_token holding a token (e.g. image_token)
    named = [k for k in sorted(tok.doc or {}) if k in SPECIAL_TOKENS or (
        k.endswith("_token") and k.isidentifier() and type(tok.get(k)) in (str, dict))]
    tokens = {k: v for k, v in ((k, tok.token(k)) for k in named) if v is not None}

    def token_id(key: str) -> int | None:
        if key not in tokens or words is None:
            return None
        if tokens[key] not in words.ids:
            raise EdgelinError(f"{tok.path}: {key} {short(tokens[key])} is not a token of {tokenizer_json}")
        return tok.c.integer(words.ids[tokens[key]], f"{key}'s id", 0, vocab_size - 1)

    def first(*candidates: list[int]) -> list[int]:
        return next((c for c in candidates if c), [])

    eos = first(gen.ids("eos_token_id", vocab_size), _config_ids(config, "eos_token_id", vocab_size),
                [i for i in [token_id("eos_token")] if i is not None])
    pad = first(gen.ids("pad_token_id", vocab_size), _config_ids(config, "pad_token_id", vocab_size),
                [i for i in [token_id("pad_token")] if i is not None])
    bos = first(gen.ids("bos_token_id", vocab_size), _config_ids(config, "bos_token_id", vocab_size),
                [i for i in [token_id("bos_token")] if i is not None])
    add_bos_token = tok.flag("add_bos_token")  # checked even where the post-processor decides
    fields: dict[str, Any] = {}
    if words is not None:  # transformers 5: the post-processor decides; without one, add_bos_token
        leading = words.leading if words.post_processor else (token_id("bos_token") if add_bos_token else None)
        if leading is not None:
            bos = [tok.c.integer(leading, "the BOS of tokenizer.json's post-processor", 0, vocab_size - 1)]
        fields["add_bos"] = leading is not None
    if bos:
        fields["bos_id"] = bos[0]
    if eos:
        fields["eos_id"], fields["eos_ids"] = eos[0], list(dict.fromkeys(eos))
    if pad:
        fields["pad_id"] = pad[0]
    if tokens:
        fields["special_tokens"] = tokens
    templates = _templates(directory, tok)
    if templates:
        fields["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
    return Conventions(fields, _generation(gen))
