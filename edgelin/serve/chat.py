"""Chat messages to prompt tokens: the one place that knows how a conversation is laid out as text.

A package with a chat template (imported chat models) renders the messages with it, in the runtime's
sandbox (`edgelin.runtime.ChatTemplate`), as transformers' `apply_chat_template` does. A package
without one (byte-level models) gets the fallback format below:

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

from edgelin.runtime.chat_template import ChatTemplate
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


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Message],
                template: ChatTemplate | None = None) -> tuple[list[int], list[int]]:
    """Prompt token ids for `messages` and the positions where each message ends (checkpoints).

    With `template`, the ids of its rendering (which writes any BOS itself), and a checkpoint where
    the rendering of the first i messages ends, for each i whose text and tokens prefix the whole.

    Raises:
        EdgelinError: the template refuses the conversation or fails (one line).
    Example:
        >>> encode_chat(ByteTokenizer(), [Message("user", "hi")])  # doctest: +SKIP
        ([117, 115, 101, 114, 58, 32, 104, 105, 10, 97, ...], [9])
    """
    if template is not None:
        turns = [{"role": m.role, "content": m.content} for m in messages]
        text = template.render(turns, add_generation_prompt=True)
        ids, ends = tokenizer.encode(text), []
        for i in range(1, len(turns)):
            head = template.render(turns[:i], add_generation_prompt=False)
            head_ids = tokenizer.encode(head) if text.startswith(head) else None
            if head_ids and ids[:len(head_ids)] == head_ids:
                ends.append(len(head_ids))
        return ids, ends
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    ends = []
    for piece in chat_pieces(messages):
        ids += tokenizer.encode(piece)
        ends.append(len(ids))
    return ids, ends[:-1]
