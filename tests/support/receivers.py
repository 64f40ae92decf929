"""Local HTTP receivers standing in for Slack's and Discord's incoming webhooks and for a
tenant's signed-webhook endpoint: a real aiohttp server on the test's loop that keeps every
request and answers the statuses the test scripts (200 once the script runs out)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """``await start()``; ``url(path)``; ``script(500, 500)``; ``await wait_for(n)``."""

    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _statuses: list[int] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, *statuses: int) -> None:
        """The next answers, in order."""
        self._statuses.extend(statuses)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self._statuses.pop(0) if self._statuses else 200
        async with self._arrived:
            self.requests.append(Received(request.path, dict(request.headers), body, status))
            self._arrived.notify_all()
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(
        self, count: int, path: str | None = None, timeout: float = 15.0
    ) -> list[Received]:
        """The requests (to ``path``, if given) once there are at least ``count`` of them."""

        def matching() -> list[Received]:
            return [r for r in self.requests if path is None or r.path == path]

        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(matching()) >= count), timeout
            )
        return matching()


def verify_signature(secret: str, header: str, body: bytes, now: float | None = None) -> bool:
    """What a receiver does with ``X-CIC-Signature`` (Stripe's scheme): recompute the
    HMAC-SHA256 of ``"<t>.<body>"`` and compare in constant time; refuse an old ``t``."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > SIGNATURE_TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), given)
