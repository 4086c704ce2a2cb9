"""Conversations with a package: its chat template renders the messages, the model's state carries them.

A recurrent model's state is the whole conversation so far, so a turn feeds only what the model has
not seen. Each turn renders the whole conversation with the package's template (as transformers'
`apply_chat_template` does); when that text starts with what the state already covers (the previous
prompt, the reply as generated, its end token), only the rest is tokenized and fed: no prefill of the
history again. A template that rewrites earlier turns (drops old reasoning, trims replies) makes the
two texts differ; that turn starts the state over from the whole rendered conversation (counted in
`Chat.restarts`), so the model always sees exactly what the template says.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edgelin.errors import EdgelinError
from edgelin.runtime.chat_template import ChatTemplate
from edgelin.runtime.generate import Generation, end_ids, generate
from edgelin.runtime.sampling import SamplingConfig, package_max_new_tokens
from edgelin.runtime.session import Session
from edgelin.runtime.tokenizer import Tokenizer, load_tokenizer

CHAT_MAX_NEW_TOKENS = 512  # a reply's cap when neither the caller nor the package says; replies end at eos


class Chat:
    """A conversation with the model of `session`, in its chat template.

    Args:
        session: a loaded package that has a chat template (`ChatTemplate.from_manifest`).
        tokenizer: its tokenizer (default: the package's, skipping special tokens in replies).
        system: a system message to start every conversation with.
        template: the name of one of the package's named templates (default: its default one).
        sampling: the sampling of every reply (default: the package's defaults; greedy without).
        max_new_tokens: a reply's length cap (default: the package's, else CHAT_MAX_NEW_TOKENS).
        seed: sampling seed of the first reply (the n-th uses seed + n); None: unseeded.
    Attributes:
        messages: the conversation so far ({"role": ..., "content": ...} dicts).
        restarts: turns whose rendered text did not extend what the state held, so were fed whole.
    Example:
        >>> chat = Chat(Session("out/lfm2"), system="Answer briefly.")  # doctest: +SKIP
        >>> print("".join(chat.send("What is the capital of France?")))  # doctest: +SKIP
        Paris.
        >>> for piece in chat.send("And of Italy?"):  # feeds only the new turn  # doctest: +SKIP
        ...     print(piece, end="")
    """

    def __init__(self, session: Session, tokenizer: Tokenizer | None = None, *, system: str | None = None,
                 template: str | None = None, sampling: SamplingConfig | None = None,
                 max_new_tokens: int | None = None, seed: int | None = 0) -> None:
        if not isinstance(session, Session):
            raise EdgelinError(f"session must be a Session, not {type(session).__name__}")
        if system is not None and not isinstance(system, str):
            raise EdgelinError(f"the system message must be text (str), not {type(system).__name__}")
        self.session = session
        self.template = ChatTemplate.from_manifest(session.manifest, template)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(session.package_dir, session.manifest)
        self.system, self.sampling, self.max_new_tokens, self.seed = system, sampling, max_new_tokens, seed
        self.restarts = 0
        self._reply: Iterator[str] | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new conversation (the system message only) from a fresh state."""
        self._close_reply()
        self.messages: list[dict[str, Any]] = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.state = self.session.new_state(1)
        self._seen = ""  # the text the state and `_pending` cover
        self._pending: list[int] = []  # sampled or rendered, not fed yet
        self._turns = 0

    def send(self, content: str, *, max_new_tokens: int | None = None,
             sampling: SamplingConfig | None = None) -> Iterator[str]:
        """Add a user message and stream the assistant's reply as text pieces.

        The reply joins `messages` when the stream ends, also when it is closed early (then as far as
        it got). A reply still streaming when the next message is sent is closed first.
        Raises:
            EdgelinError: content that is not text, or a template that fails on the conversation.
        """
        if not isinstance(content, str):
            raise EdgelinError(f"a message must be text (str), not {type(content).__name__}")
        self._close_reply()
        messages = [*self.messages, {"role": "user", "content": content}]
        text = self.template.render(messages, add_generation_prompt=True)
        state, ids = self.state, self._pending
        if text.startswith(self._seen):
            ids = ids + self.tokenizer.encode(text[len(self._seen):])
        else:  # the template rewrote what the state holds
            state, ids = self.session.new_state(1), self.tokenizer.encode(text)
            self.restarts += 1
        if not ids:
            raise EdgelinError("the chat template renders nothing for the conversation; nothing to answer")
        self.messages = messages
        limit = max_new_tokens if max_new_tokens is not None else self.max_new_tokens
        if limit is None:
            limit = package_max_new_tokens(self.session.manifest, len(ids), CHAT_MAX_NEW_TOKENS)
        seed = None if self.seed is None else self.seed + self._turns
        tokens = generate(self.session, ids, limit, sampling or self.sampling, seed, state, end_ids(self.tokenizer))
        self._turns += 1
        self._reply = self._stream(tokens, ids, text)
        return self._reply

    def _stream(self, tokens: Generation, fed: list[int], text: str) -> Iterator[str]:
        decoder = self.tokenizer.stream_decoder()
        try:
            for token in tokens:
                if piece := decoder.push(token):
                    yield piece
            if tail := decoder.flush():
                yield tail
        finally:
            self._finish(tokens, fed, text)

    def _finish(self, tokens: Generation, fed: list[int], text: str) -> None:
        """Record the reply and what the state now covers: the rendered text, every sampled token."""
        sampled = list(tokens.tokens)
        if tokens.pending != fed and tokens.pending[-1] in tokens.stop_ids:
            sampled.append(tokens.pending[-1])  # the end token: sampled, in the conversation, fed next turn
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(tokens.tokens)})
        self.state, self._pending = tokens.state, list(tokens.pending)
        self._seen = text + self.tokenizer.decode(sampled, skip_special_tokens=False)
        self._reply = None

    def _close_reply(self) -> None:
        if self._reply is not None:
            self._reply.close()
            self._reply = None
