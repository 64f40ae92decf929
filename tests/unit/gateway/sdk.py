"""The official ``openai`` SDK against a gateway, sync (``openai.OpenAI``, run in a worker thread
so that the gateway keeps serving on the test's event loop) or async (``openai.AsyncOpenAI``),
behind one call so that every test runs the same way with both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

KINDS = ("sync", "async")


@dataclass(frozen=True)
class Sdk:
    kind: str
    base_url: str
    api_key: str

    async def run(self, call: Callable[[Any], Any]) -> Any:
        """``call(client)``'s result; a stream is read to its end and returned as a list. The
        SDK's own retries are off, so that what a test sees is the gateway's doing."""
        if self.kind == "sync":
            return await asyncio.to_thread(self._run_sync, call)
        async with openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=0
        ) as client:
            result = await call(client)
            if isinstance(result, openai.AsyncStream):
                return [chunk async for chunk in result]
            return result

    def _run_sync(self, call: Callable[[Any], Any]) -> Any:
        with openai.OpenAI(api_key=self.api_key, base_url=self.base_url, max_retries=0) as client:
            result = call(client)
            return list(result) if isinstance(result, openai.Stream) else result
