"""Redis pub/sub for the gateway's in-process caches (revoked keys, the model catalog): the two
clients each cache uses, and one listener that keeps a subscription alive for ever."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

TIMEOUT_S = 1.0
BACKOFF_S = (0.1, 5.0)  # first and longest wait before subscribing again
_POLL_S = 1.0


def publisher(url: str) -> Redis:
    """A client for PUBLISH and small reads and writes: short timeouts, one retry."""
    return Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT_S,
        socket_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),
    )


def subscriber(url: str, **options: Any) -> Redis:
    """A client for one subscription, without retries inside redis-py: a dropped connection must
    reach :func:`listen_forever`, which subscribes again and says so (a reconnect hidden in the
    client could lose messages unnoticed)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT_S,
        socket_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        **options,
    )


async def listen_forever(
    client: Redis,
    channel: str,
    on_message: Callable[[bytes], None],
    on_subscribed: Callable[[], None],
    on_lost: Callable[[BaseException], None],
    backoff: tuple[float, float] = BACKOFF_S,
) -> None:
    """Hands the data of every message on ``channel`` to ``on_message`` until cancelled.
    ``on_subscribed`` runs after each (re)subscription (messages may have been missed before
    it), ``on_lost`` when the connection breaks; it then subscribes again after a jittered,
    doubling wait."""
    initial_s, longest_s = backoff
    wait_s = initial_s
    while True:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            on_subscribed()
            wait_s = initial_s
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                if message is not None and message.get("type") == "message":
                    on_message(message["data"])
        except (RedisError, OSError, TimeoutError) as err:
            on_lost(err)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        await asyncio.sleep(wait_s * random.uniform(0.5, 1.0))
        wait_s = min(wait_s * 2, longest_s)
