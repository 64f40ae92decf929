"""Asks a node's OpenAI server whether it is up: ``GET <endpoint>/health`` answering 200."""

from __future__ import annotations

import aiohttp


class HealthProbe:
    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def is_healthy(self, endpoint: str) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{endpoint}/health", allow_redirects=False) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
