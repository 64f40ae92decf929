"""The scheduler service assembled: gRPC server, node registry, health prober, lease sweeper."""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry
from redis.asyncio import Redis

from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics
from cic_common.redis import create_redis
from cic_common.runtime import stop_event_on_signals
from cic_scheduler.background import PeriodicTask
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.core import NodeScheduler
from cic_scheduler.health import HealthProber
from cic_scheduler.leadership import SignalsLeadership
from cic_scheduler.load import LoadScraper
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.policy import RoutingPolicies, make_policy, parse_policy_by_model
from cic_scheduler.registry import NodeRegistry
from cic_scheduler.registry_redis import RedisNodeRegistry
from cic_scheduler.servicer import SERVICE_NAME, SchedulerServicer
from cic_scheduler.signals import SignalsProcess, round_tasks
from cic_scheduler.watch import NodeChanges, WatchHub

log = logging.getLogger(__name__)


class SchedulerService:
    """``await start()`` serves; ``await stop()`` shuts down in order and releases everything."""

    def __init__(
        self,
        settings: SchedulerSettings,
        grpc_server: GrpcServer,
        scheduler: NodeScheduler,
        prober: HealthProber,
        session: aiohttp.ClientSession,
        redis: Redis,
        *,
        scraper: LoadScraper,
        leadership: SignalsLeadership,
        watch_hub: WatchHub,
        signals_process: SignalsProcess | None = None,
    ) -> None:
        self.settings = settings
        self.grpc_server = grpc_server
        self.scheduler = scheduler
        self.prober = prober
        self._session = session
        self.redis = redis
        self.scraper = scraper
        self.leadership = leadership
        self.watch_hub = watch_hub
        self.signals_process = signals_process
        sweeper = PeriodicTask(
            "lease-sweeper", settings.lease_sweep_interval_s, scheduler.expire_leases
        )
        self._tasks = [sweeper]
        if signals_process is None:  # scrapes and probes on this loop (else: in that process)
            self._tasks[:0] = round_tasks(settings, scraper, prober)

    async def start(self, host: str = "[::]") -> int:
        """Binds ``GRPC_PORT`` (0: any free port), starts the background tasks; returns the port."""
        if self.signals_process is not None:
            self.signals_process.start()
        await self.watch_hub.start()
        port = await self.grpc_server.start(self.settings.grpc_port, host=host)
        for task in self._tasks:
            task.start()
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, calls in flight finish within the grace; then tasks, then clients."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.watch_hub.stop()  # watchers follow another replica; the grace is not held
        await self.grpc_server.stop(grace)
        if self.signals_process is not None:
            await self.signals_process.stop()
        for task in self._tasks:
            await task.stop()
        await self.leadership.give_up()
        await self._session.close()
        await self.scheduler.registry.aclose()
        await self.redis.aclose()


async def create_service(
    settings: SchedulerSettings,
    registry: CollectorRegistry = REGISTRY,
    *,
    node_registry: NodeRegistry | None = None,
    policies: RoutingPolicies | None = None,
) -> SchedulerService:
    """Builds the service (nothing listens until ``start()``); call inside the running loop."""
    metrics = SchedulerMetrics(registry)
    redis = create_redis(settings.redis_url)
    nodes = node_registry or RedisNodeRegistry(
        redis,
        settings.redis_key_prefix,
        lease_ttl_s=settings.lease_ttl_s,
        breaker_failures=settings.breaker_failures,
        breaker_open_s=settings.breaker_open_s,
    )
    signals_prefix = f"{settings.redis_key_prefix}scheduler:"
    changes = NodeChanges(redis, signals_prefix)
    scheduler = NodeScheduler(
        nodes, policies or routing_policies(settings), metrics, changes=changes
    )
    watch_hub = WatchHub(redis, signals_prefix, nodes)
    await nodes.reindex(settings.load_scoring)
    metrics.refresh_nodes(await nodes.list_nodes())
    grpc_server = GrpcServer(GrpcMetrics(registry))
    grpc_server.add_service(
        SERVICE_NAME,
        pb_grpc.add_SchedulerServiceServicer_to_server,
        SchedulerServicer(scheduler, watch_hub),
    )
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.health_probe_timeout_s),
        headers={"User-Agent": "cic-scheduler"},
    )
    leadership = SignalsLeadership(redis, signals_prefix, settings.signals_collector_ttl_s)
    prober = HealthProber(
        nodes, session, settings.health_probe_timeout_s, metrics, leadership, changes
    )
    scraper = LoadScraper(nodes, session, settings.load_scrape_timeout_s, metrics, leadership)
    return SchedulerService(
        settings,
        grpc_server,
        scheduler,
        prober,
        session,
        redis,
        scraper=scraper,
        leadership=leadership,
        watch_hub=watch_hub,
        signals_process=SignalsProcess(settings, metrics) if settings.signals_process else None,
    )


def routing_policies(settings: SchedulerSettings) -> RoutingPolicies:
    """ROUTING_POLICY for every model, except those named in ROUTING_POLICY_BY_MODEL."""
    scoring, bound = settings.load_scoring, settings.prefix_affinity_max_extra_load
    by_model = {
        model: make_policy(name, scoring, bound)
        for model, name in parse_policy_by_model(settings.routing_policy_by_model).items()
    }
    return RoutingPolicies(make_policy(settings.routing_policy, scoring, bound), by_model)


async def serve(settings: SchedulerSettings) -> None:
    """Runs until SIGTERM or SIGINT, then stops in order."""
    stop = stop_event_on_signals()
    service = await create_service(settings)
    try:
        port = await service.start()
        log.info("scheduler serving gRPC on port %d", port)
        await stop.wait()
        log.info("scheduler stopping (grace %.0f s)", settings.shutdown_grace_s)
    finally:
        await service.stop()
    log.info("scheduler stopped")
