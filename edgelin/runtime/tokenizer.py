"""Tokenizers the runtime ships: UTF-8 bytes (built in) and Hugging Face `tokenizers` (optional)."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgelin.errors import EdgelinError
from edgelin.runtime.package import Manifest


class StreamDecoder(Protocol):
    """Turns tokens into text pieces as they arrive, holding back incomplete characters."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer(Protocol):
    """Text <-> token ids; `stream_decoder()` gives a fresh decoder for one generated stream."""

    vocab_size: int
    bos_id: int | None  # from the manifest: prompts start with it (when add_bos), generation stops at eos_ids
    eos_id: int | None
    eos_ids: tuple[int, ...]
    add_bos: bool

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool | None = None) -> str: ...

    def stream_decoder(self) -> StreamDecoder: ...


class ByteStreamDecoder:
    """UTF-8 bytes -> text, holding back a character until all its bytes have arrived."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._dec.decode(bytes([_byte(token)]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def utf8(text: str) -> bytes:
    """`text` as UTF-8; text that has none (a lone surrogate) is an EdgelinError."""
    if not isinstance(text, str):
        raise EdgelinError(f"text must be a str, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise EdgelinError(f"the text is not valid Unicode: {e.reason} at position {e.start}") from None


def _byte(token: int) -> int:
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < 256:
        raise EdgelinError(f"token id {token!r:.40} is not a byte (the byte tokenizer has vocab 256)")
    return int(token)


class ByteTokenizer:
    """Token = one UTF-8 byte; vocab 256, no special tokens (`skip_special_tokens` changes nothing)."""

    vocab_size = 256
    bos_id: int | None = None
    eos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    add_bos = True

    def encode(self, text: str) -> list[int]:
        return list(utf8(text))

    def decode(self, ids: list[int], skip_special_tokens: bool | None = None) -> str:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise EdgelinError(f"ids must be a sequence of token ids, not {type(ids).__name__}")
        return bytes(_byte(t) for t in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> ByteStreamDecoder:
        return ByteStreamDecoder()


class IncrementalDecoder:
    """Stream decoding for any tokenizer with `decode(ids)`: emits text once it stops ending in U+FFFD."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok, self._ids, self._prefix, self._read = tokenizer, [], 0, 0

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        before = self._tok.decode(self._ids[self._prefix:self._read])
        now = self._tok.decode(self._ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        before = self._tok.decode(self._ids[self._prefix:self._read])
        now = self._tok.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return now[len(before):]


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json (the library is imported only here).

    Decoding skips special tokens unless told otherwise (`skip_special_tokens`, per call or for the
    tokenizer): the added tokens tokenizer.json marks special and `special_tokens` (the package's named
    ones: bos_token, eos_token, ...), so `<|im_end|>` or `<pad>` never show in text, as transformers'
    `decode(..., skip_special_tokens=True)`.
    """

    def __init__(self, path: Path, *, skip_special_tokens: bool = True, special_tokens: Iterable[str] = ()) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise EdgelinError(f"{path.name} needs the 'tokenizers' library: pip install 'edgelin[tokenizers]'") from None
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as e:  # the library raises its own exception type
            raise EdgelinError(f"cannot load tokenizer {path}: {e}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id: int | None = None
        self.eos_id: int | None = None
        self.eos_ids: tuple[int, ...] = ()
        self.add_bos = True
        self.skip_special_tokens = skip_special_tokens
        self.special_ids = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self.special_ids |= {i for i in map(self._tok.token_to_id, special_tokens) if i is not None}

    def encode(self, text: str) -> list[int]:
        utf8(text)
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool | None = None) -> str:
        skip = self.skip_special_tokens if skip_special_tokens is None else skip_special_tokens
        ids = [int(t) for t in ids]
        if skip:
            ids = [t for t in ids if t not in self.special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def stream_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Prompt ids as the model was trained to see them (transformers' `tokenizer(text)`): bos_id first
    when the package's tokenizer adds one (`add_bos`; packages without the field: whenever it names a
    bos_id), then the text."""
    ids = tokenizer.encode(text)
    add = getattr(tokenizer, "add_bos", True) and tokenizer.bos_id is not None
    return [tokenizer.bos_id, *ids] if add and ids else ids


def load_tokenizer(package_dir: str | os.PathLike, manifest: Manifest, *,
                   skip_special_tokens: bool = True) -> Tokenizer:
    """The tokenizer the manifest names: {"type": "bytes"} or {"type": "tokenizers", "file": ...}, with
    its special ids. `skip_special_tokens`: leave special tokens out of decoded text (the default)."""
    spec: dict[str, Any] = manifest.tokenizer
    kind = spec.get("type", "bytes")
    if kind == "bytes":
        tokenizer: Tokenizer = ByteTokenizer()
    elif kind == "tokenizers":
        tokenizer = HFTokenizer(Path(package_dir) / spec.get("file", "tokenizer.json"),
                                skip_special_tokens=skip_special_tokens,
                                special_tokens=(spec.get("special_tokens") or {}).values())
    else:
        raise EdgelinError(f"unknown tokenizer type {kind!r} in {Path(package_dir) / 'manifest.json'}")
    tokenizer.bos_id, tokenizer.eos_id = spec.get("bos_id"), spec.get("eos_id")
    tokenizer.eos_ids = tuple(spec.get("eos_ids") or ([] if tokenizer.eos_id is None else [tokenizer.eos_id]))
    tokenizer.add_bos = spec.get("add_bos", True)
    return tokenizer
