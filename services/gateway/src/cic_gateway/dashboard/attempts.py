"""Sign-in attempts, counted in Redis so that every gateway replica shares the count: so many per
email address and per client address in each fixed window (``DASHBOARD_SIGNIN_*``)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from cic_gateway.resources import REDIS, SETTINGS


async def _over(request: web.Request, kind: str, subject: str, limit: int) -> int:
    """Counts one attempt; the seconds until the window ends when it is over the limit, else 0."""
    settings = request.app[SETTINGS]
    name = hashlib.sha256(subject.encode()).hexdigest()[:32]  # no email address in Redis
    key = f"{settings.redis_key_prefix}dashboard:signin:{kind}:{name}"
    async with request.app[REDIS].pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=settings.dashboard_signin_window_s, nx=True)  # Redis 6 has no EXPIRE NX
        pipe.incr(key)
        pipe.ttl(key)
        _, count, ttl = await pipe.execute()
    return max(int(ttl), 1) if int(count) > limit else 0


async def retry_after(request: web.Request, client: str, email: str | None = None) -> int:
    """Counts a sign-in attempt from ``client`` (for ``email``, if given); the seconds to wait
    when one of the two is over its limit, else 0."""
    settings = request.app[SETTINGS]
    wait = await _over(request, "client", client, settings.dashboard_signin_per_client)
    if email is not None:
        wait = max(
            wait,
            await _over(request, "email", email.lower(), settings.dashboard_signin_per_email),
        )
    return wait
