"""The Redis client every service uses."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    """A pooled asyncio client for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=15,
        retry_on_timeout=True,
    )
