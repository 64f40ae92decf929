"""The scheduler service assembled: gRPC server, node registry, health prober, lease sweeper."""

from __future__ import annotations

import logging

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
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.policy import RoutingPolicies, make_policy, parse_policy_by_model
from cic_scheduler.registry import NodeRegistry
from cic_scheduler.servicer import SERVICE_NAME, SchedulerServicer
from cic_scheduler.signals import Signals, SignalsProcess, redis_registry
from cic_scheduler.watch import NodeChanges, WatchHub

log = logging.getLogger(__name__)


class SchedulerService:
    """``await start()`` serves; ``await stop()`` shuts down in order and releases everything."""

    def __init__(
        self,
        settings: SchedulerSettings,
        grpc_server: GrpcServer,
        scheduler: NodeScheduler,
        redis: Redis,
        watch_hub: WatchHub,
        *,
        signals: Signals | None = None,
        signals_process: SignalsProcess | None = None,
    ) -> None:
        self.settings = settings
        self.grpc_server = grpc_server
        self.scheduler = scheduler
        self.redis = redis
        self.watch_hub = watch_hub
        # The scrapes and probes: on this loop (signals) or in a process of their own.
        self.signals = signals
        self.signals_process = signals_process
        self._sweeper = PeriodicTask(
            "lease-sweeper", settings.lease_sweep_interval_s, scheduler.expire_leases
        )

    async def start(self, host: str = "[::]") -> int:
        """Binds ``GRPC_PORT`` (0: any free port), starts the background tasks; returns the port."""
        if self.signals_process is not None:
            self.signals_process.start()
        await self.watch_hub.start()
        port = await self.grpc_server.start(self.settings.grpc_port, host=host)
        if self.signals is not None:
            self.signals.start()
        self._sweeper.start()
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, calls in flight finish within the grace; then tasks, then clients."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.watch_hub.stop()  # watchers follow another replica; the grace is not held
        await self.grpc_server.stop(grace)
        if self.signals_process is not None:
            await self.signals_process.stop()
        if self.signals is not None:
            await self.signals.stop()
        await self._sweeper.stop()
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
    nodes = node_registry or redis_registry(settings, redis)
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
    in_process = not settings.signals_process
    return SchedulerService(
        settings,
        grpc_server,
        scheduler,
        redis,
        watch_hub,
        signals=Signals(settings, metrics, nodes, redis) if in_process else None,
        signals_process=None if in_process else SignalsProcess(settings, metrics),
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
