"""The simulator's tokenizer: simple, documented and deterministic.

Rule (this is what usage numbers and metrics count):

- A text's tokens are the matches of ``<\\|im_start\\|>|<\\|im_end\\|>|\\w+|[^\\w\\s]``:
  each chat-template marker is one token, each run of word characters is one token, each
  other non-space character is one token; whitespace is never a token.
- A completion prompt (string) counts as its text; a prompt of token ids counts its ids.
- A chat prompt counts as its rendered template, ChatML style::

      <|im_start|>{role}\\n{content}<|im_end|>\\n   (per message)
      <|im_start|>assistant\\n                       (when add_generation_prompt, the default)

  so a message with a one-word role costs ``3 + tokens(content)`` and the generation prompt 2.
  List content counts its ``text`` parts joined by newlines; other parts count nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

TOKEN_PATTERN = re.compile(r"<\|im_start\|>|<\|im_end\|>|\w+|[^\w\s]")
GENERATION_PROMPT = "<|im_start|>assistant\n"


def count_tokens(text: str) -> int:
    """How many tokens the simulator counts in ``text``."""
    return len(TOKEN_PATTERN.findall(text))


def message_text(content: Any) -> str:
    """A chat message's content as plain text (text parts of a list joined by newlines)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [
        str(part.get("text", ""))
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text"
    ]
    return "\n".join(parts)


def render_chat(messages: Iterable[tuple[str, Any]], add_generation_prompt: bool = True) -> str:
    """The prompt text the chat template makes of ``(role, content)`` pairs."""
    rendered = "".join(
        f"<|im_start|>{role}\n{message_text(content)}<|im_end|>\n" for role, content in messages
    )
    return rendered + GENERATION_PROMPT if add_generation_prompt else rendered
