"""Revocations reach every gateway replica at once, through Redis pub/sub.

Revoking a key, or changing a tenant (its status or its limits) or an environment, publishes a
message on ``{prefix}key-events``; every replica subscribes in a background task and drops that
key, or that tenant's or environment's keys, from its in-process cache, so the next request reads
Postgres again. The cache's time-to-live (``KEY_CACHE_TTL_S``) stays as the safety net for a
message that is lost: while Redis is unreachable the subscriber reconnects with back-off (logging
the outage once), and once it is back it empties the whole cache, since it may have missed
messages meanwhile.

Messages are JSON: ``{"key_id": "key_..."}``, ``{"tenant_id": "ten_..."}`` or
``{"environment_id": "env_..."}`` (an environment's status, limits, models or region changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from cic_common.periodic import cancel_and_wait
from cic_gateway import pubsub
from cic_gateway.keys import KeyStore
from cic_gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

CHANNEL = "key-events"
PUBLISH_TIMEOUT_S = 1.0
READY_TIMEOUT_S = 2.0
_HEALTH_CHECK_S = 10


class Revocations:
    """Publishes key and tenant changes, and applies everyone's to this replica's cache."""

    def __init__(
        self,
        url: str,
        prefix: str,
        keys: KeyStore,
        metrics: GatewayMetrics,
        backoff: tuple[float, float] = pubsub.BACKOFF_S,
    ) -> None:
        self.channel = f"{prefix}{CHANNEL}"
        self._keys = keys
        self._metrics = metrics
        self._backoff = backoff
        self._publisher = pubsub.publisher(url)
        self._subscriber = pubsub.subscriber(
            url, health_check_interval=_HEALTH_CHECK_S, client_name=f"{prefix}revocations"
        )
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._attempted = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Starts listening; returns once subscribed, or after the first failed attempt (the
        task keeps trying), or after ``ready_timeout_s``."""
        self._task = asyncio.create_task(self._run(), name="revocations")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_timeout_s):
                await self._attempted.wait()

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._subscriber.aclose()
        await self._publisher.aclose()

    async def key_revoked(self, key_id: str) -> None:
        await self._publish({"key_id": key_id})

    async def tenant_changed(self, tenant_id: str) -> None:
        await self._publish({"tenant_id": tenant_id})

    async def environment_changed(self, environment_id: str) -> None:
        await self._publish({"environment_id": environment_id})

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
        await pubsub.listen_forever(
            self._subscriber,
            self.channel,
            on_message=self._apply,
            on_subscribed=self._on_subscribed,
            on_lost=self._on_lost,
            backoff=self._backoff,
        )

    def _on_subscribed(self) -> None:
        if self._failing:
            log.info("revocation channel subscribed again; key cache emptied")
            self._apply_all()
        self._failing = False
        self.subscribed.set()
        self._attempted.set()

    def _on_lost(self, err: BaseException) -> None:
        self.subscribed.clear()
        self._attempted.set()
        if not self._failing:
            log.warning(
                "revocation channel lost (%s); reconnecting with back-off, cached keys "
                "expire within their TTL meanwhile",
                type(err).__name__,
            )
        self._failing = True

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
            "environment_id": self._keys.forget_environment,
        }
        for field, forget in actions.items():
            value = parsed.get(field)
            if isinstance(value, str):
                forget(value)
                self._metrics.key_cache_invalidations.labels(field.removesuffix("_id")).inc()

    def _apply_all(self) -> None:
        self._keys.forget_all()
        self._metrics.key_cache_invalidations.labels("all").inc()
