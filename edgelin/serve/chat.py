"""Chat messages to prompt tokens: the one place that knows how a conversation is laid out as text.

Packages do not carry a chat template yet. Until they do, `chat_pieces` renders the fallback format
below; a package's own template will be read here, and nothing else changes.

    system: You are terse.
    user: Hi!
    assistant: Hello.
    user: Name a color.
    assistant:

A message's text follows "role:" after one space, unless it starts with white space itself (a reply
generated after the "assistant:" cue usually does): sent back in the next turn, a reply then gives
exactly the tokens that were generated. Each message is encoded on its own, so a conversation that
grows by a turn keeps the tokens of the turns before it and the prefix cache resumes after them
(after the whole last reply, whose state the server keeps); the end of each message is a checkpoint.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgelin.runtime.tokenizer import Tokenizer

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One chat message: a role from ROLES and its text."""

    role: str
    content: str


def chat_pieces(messages: Sequence[Message]) -> list[str]:
    """The prompt as text pieces: one per message, then the assistant's cue (the fallback format)."""
    return [f"{m.role}:{'' if m.content[:1].isspace() else ' '}{m.content}\n" for m in messages] + ["assistant:"]


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """Prompt token ids for `messages` and the positions where each message ends (checkpoints).

    Example:
        >>> encode_chat(ByteTokenizer(), [Message("user", "hi")])  # doctest: +SKIP
        ([117, 115, 101, 114, 58, 32, 104, 105, 10, 97, ...], [9])
    """
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    ends = []
    for piece in chat_pieces(messages):
        ids += tokenizer.encode(piece)
        ends.append(len(ids))
    return ids, ends[:-1]
