"""Revocations reach every gateway replica at once, through Redis pub/sub.

Revoking a key, or changing a tenant (its status or its limits), publishes a message on
``{prefix}key-events``; every replica subscribes in a background task and drops that key, or
that tenant's keys, from its in-process cache, so the next request reads Postgres again. The
cache's time-to-live (``KEY_CACHE_TTL_S``) stays as the safety net for a message that is lost:
while Redis is unreachable the subscriber reconnects with back-off (logging the outage once),
and once it is back it empties the whole cache, since it may have missed messages meanwhile.

Messages are JSON: ``{"key_id": "key_..."}`` or ``{"tenant_id": "ten_..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from cic_gateway.keys import KeyStore
from cic_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

CHANNEL = "key-events"
PUBLISH_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 2.0
_BACKOFF_INITIAL_S = 0.1
_BACKOFF_MAX_S = 5.0
_POLL_S = 1.0
_HEALTH_CHECK_S = 10


class Revocations:
    """Publishes key and tenant changes, and applies everyone's to this replica's cache."""

    def __init__(
        self,
        url: str,
        prefix: str,
        keys: KeyStore,
        metrics: GatewayMetrics,
        backoff: tuple[float, float] = (_BACKOFF_INITIAL_S, _BACKOFF_MAX_S),
    ) -> None:
        self.channel = f"{prefix}{CHANNEL}"
        self._keys = keys
        self._metrics = metrics
        self._backoff_initial_s, self._backoff_max_s = backoff
        self._publisher = Redis.from_url(
            url,
            socket_connect_timeout=PUBLISH_TIMEOUT_S,
            socket_timeout=PUBLISH_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        # No retries inside redis-py here: a dropped connection must reach _run, which
        # resubscribes and empties the cache (a reconnect hidden in the client could lose messages).
        self._subscriber = Redis.from_url(
            url,
            socket_connect_timeout=PUBLISH_TIMEOUT_S,
            socket_timeout=PUBLISH_TIMEOUT_S,
            health_check_interval=_HEALTH_CHECK_S,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            client_name=f"{prefix}revocations",
        )
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Starts listening; returns once subscribed, or after the first failed attempt (the
        task keeps trying), or after ``ready_timeout_s``."""
        self._task = asyncio.create_task(self._run(), name="revocations")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), ready_timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._subscriber.aclose()
        await self._publisher.aclose()

    async def key_revoked(self, key_id: str) -> None:
        await self._publish({"key_id": key_id})

    async def tenant_changed(self, tenant_id: str) -> None:
        await self._publish({"tenant_id": tenant_id})

    async def _publish(self, message: dict[str, str]) -> None:
        """Best effort: this replica already forgot the key, and the others' caches expire
        within ``KEY_CACHE_TTL_S`` if the message cannot be sent."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await self._publisher.publish(self.channel, orjson.dumps(message))
        except (RedisError, OSError, TimeoutError) as err:
            log.warning(
                "could not publish %s to other replicas (%s); their caches expire it instead",
                ", ".join(message),
                type(err).__name__,
            )

    async def _run(self) -> None:
        backoff = self._backoff_initial_s
        failing = False
        while True:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                if failing:
                    log.info("revocation channel subscribed again; key cache emptied")
                    self._apply_all()
                failing, backoff = False, self._backoff_initial_s
                self.subscribed.set()
                self._attempted.set()
                await self._listen(pubsub)
            except (RedisError, OSError, TimeoutError) as err:
                self.subscribed.clear()
                self._attempted.set()
                if not failing:
                    log.warning(
                        "revocation channel lost (%s); reconnecting with back-off, cached keys "
                        "expire within their TTL meanwhile",
                        type(err).__name__,
                    )
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._backoff_max_s)

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
            if message is not None and message.get("type") == "message":
                self._apply(message["data"])

    def _apply(self, data: bytes) -> None:
        try:
            parsed: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            log.warning("ignored a malformed message on the revocation channel")
            return
        actions: dict[str, Callable[[str], None]] = {
            "key_id": self._keys.forget_key,
            "tenant_id": self._keys.forget_tenant,
        }
        for field, forget in actions.items():
            value = parsed.get(field)
            if isinstance(value, str):
                forget(value)
                self._metrics.key_cache_invalidations.labels(field.removesuffix("_id")).inc()

    def _apply_all(self) -> None:
        self._keys.forget_all()
        self._metrics.key_cache_invalidations.labels("all").inc()
