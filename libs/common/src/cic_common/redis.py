"""The Redis client every service uses."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def create_redis(url: str, max_connections: int = 64, timeout_s: float = 2.0) -> Redis:
    """A pooled asyncio client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    The pool makes a caller wait (up to ``timeout_s``) for a free connection rather than fail:
    redis-py's default pool raises once ``max_connections`` calls are in flight, which a busy
    gateway or scheduler reaches under load."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    return Redis(connection_pool=pool)
