"""The notifier as billing runs it: channels and deliveries in billing's Postgres, the bus reader
(with ``REDIS_URL``), the delivery worker and the senders, started and stopped together. It also
holds billing's own publisher on the bus (``payment.failed``)."""

from __future__ import annotations

import logging

import asyncpg
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from cic_billing.config import Settings
from cic_billing.metrics import BillingMetrics
from cic_billing.notify.bus_reader import BusReader
from cic_billing.notify.channels import ChannelStore
from cic_billing.notify.deliveries import DeliveryStore
from cic_billing.notify.senders import HttpPoster, SmtpSettings, build_senders
from cic_billing.notify.worker import DeliveryWorker, RetryPolicy
from cic_common.events_bus import EventBus, EventBusMetrics
from cic_common.redis import create_redis

log = logging.getLogger(__name__)

_BUS_BLOCK_S = 1.0


class Notifier:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        metrics: BillingMetrics,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.channels = ChannelStore(pool)
        self.deliveries = DeliveryStore(pool)
        self._http: HttpPoster | None = None
        self._metrics = metrics
        self._bus_metrics = EventBusMetrics(registry)
        self._redis: Redis | None = None
        self.bus: EventBus | None = None  # None: no REDIS_URL
        if settings.redis_url is not None:
            # Clients connect on first use.
            self._redis = create_redis(settings.redis_url, max_connections=16)
            self.bus = EventBus(self._redis, settings.redis_key_prefix, self._bus_metrics)
        self._reader_redis: Redis | None = None
        self.reader: BusReader | None = None
        self.worker: DeliveryWorker | None = None

    @property
    def email_enabled(self) -> bool:
        return bool(self.settings.smtp_host)

    def wake(self) -> None:
        """Sends due deliveries at once (one was just made)."""
        if self.worker is not None:
            self.worker.wake()

    async def start(self) -> None:
        s = self.settings
        self._http = HttpPoster(s.notify_timeout_s, s.notify_allow_private_targets)
        smtp = SmtpSettings(
            host=s.smtp_host,
            port=s.smtp_port,
            security=s.smtp_security,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value(),
            sender=s.smtp_from,
            timeout_s=s.notify_timeout_s,
        )
        self.worker = DeliveryWorker(
            self.deliveries,
            build_senders(self._http, smtp),
            self._metrics,
            RetryPolicy(s.notify_max_attempts, s.notify_retry_initial_s, s.notify_retry_max_s),
            send_timeout_s=s.notify_timeout_s,
            poll_interval_s=s.notify_poll_interval_s,
            concurrency=s.notify_concurrency,
            retention_days=s.notify_retention_days,
        )
        await self.worker.start()
        if s.redis_url is None:
            log.warning("no REDIS_URL: notifications are not read from the event bus")
            return
        # Its reads block: a client of its own, with a socket timeout longer than the block.
        self._reader_redis = Redis.from_url(
            s.redis_url,
            socket_connect_timeout=2.0,
            socket_timeout=_BUS_BLOCK_S + 5.0,
            health_check_interval=15,
        )
        self.reader = BusReader(
            self._reader_redis,
            s.redis_key_prefix,
            self.deliveries,
            self._metrics,
            self.worker.wake,
            claim_idle_s=s.notify_claim_idle_s,
            block_s=_BUS_BLOCK_S,
        )
        await self.reader.start()

    async def close(self, timeout_s: float) -> None:
        if self.reader is not None:
            await self.reader.close()
        if self.worker is not None:
            await self.worker.close(timeout_s)
        if self._http is not None:
            await self._http.close()
        for client in (self._reader_redis, self._redis):
            if client is not None:
                await client.aclose()
