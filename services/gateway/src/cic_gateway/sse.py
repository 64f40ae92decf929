"""Relaying a node's server-sent events to the client, event by event.

The gateway always asks the node for usage (``include_usage`` and ``continuous_usage_stats``),
so that even a stream the client cuts off can be billed for what the node produced until then.
The client still receives exactly the chunks it asked for: the usage-only chunk
(``"choices": []``) only with ``include_usage``, and a ``usage`` field on every chunk only with
``continuous_usage_stats`` as well (vLLM's rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"[DONE]"
MAX_EVENT_BYTES = 8 * 1024 * 1024


class BadStream(Exception):
    """The node sent something that is not a stream of server-sent events."""


@dataclass(frozen=True, slots=True)
class UsageWish:
    """Which usage the client asked to receive."""

    final_chunk: bool
    every_chunk: bool

    @classmethod
    def from_request(cls, stream_options: dict[str, Any] | None) -> UsageWish:
        options = stream_options or {}
        final = options.get("include_usage") is True
        return cls(
            final_chunk=final, every_chunk=final and options.get("continuous_usage_stats") is True
        )


def upstream_stream_options(stream_options: dict[str, Any] | None) -> dict[str, Any]:
    """The client's ``stream_options`` with usage switched on for the gateway's own accounting."""
    return {**(stream_options or {}), "include_usage": True, "continuous_usage_stats": True}


def event_bytes(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


class SseParser:
    """Splits a byte stream into the ``data`` of each event (lines joined by ``\\n``)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        del self._buffer[:start]
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise BadStream("an event larger than the gateway accepts")
        return events


class StreamRelay:
    """Turns the node's events into the client's, remembering the last usage the node reported."""

    def __init__(self, wish: UsageWish) -> None:
        self._wish = wish
        self._parser = SseParser()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        self.first_token_relayed = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The bytes to write to the client for this piece of the node's stream."""
        out = []
        for payload in self._parser.feed(chunk):
            relayed = self._relay(payload)
            if relayed is not None:
                out.append(event_bytes(relayed))
        return out

    def _relay(self, payload: bytes) -> bytes | None:
        if payload.strip() == DONE:
            self.done = True
            return DONE
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadStream("an event that is not JSON") from None
        if not isinstance(chunk, dict):
            return payload
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._remember(usage)
        choices = chunk.get("choices")
        if choices == [] and usage is not None:
            return payload if self._wish.final_chunk else None
        if choices:
            self.first_token_relayed = True
        if "usage" in chunk and not self._wish.every_chunk:
            del chunk["usage"]
            return orjson.dumps(chunk)
        return payload

    def _remember(self, usage: dict[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion


def usage_of(body: bytes) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a non-streamed answer (zeros when absent)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, 0
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )
