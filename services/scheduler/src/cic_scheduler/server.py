"""The scheduler service assembled: gRPC server, node registry, health prober, lease sweeper."""

from __future__ import annotations

import logging

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry

from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics
from cic_common.runtime import stop_event_on_signals
from cic_scheduler.background import PeriodicTask
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.core import NodeScheduler
from cic_scheduler.health import HealthProber
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.policy import LeastLoadedPolicy, Policy
from cic_scheduler.registry import NodeRegistry
from cic_scheduler.registry_memory import InMemoryNodeRegistry
from cic_scheduler.servicer import SERVICE_NAME, SchedulerServicer

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
    ) -> None:
        self.settings = settings
        self.grpc_server = grpc_server
        self.scheduler = scheduler
        self.prober = prober
        self._session = session
        self._tasks = [
            PeriodicTask("health-prober", settings.health_probe_interval_s, prober.probe_all),
            PeriodicTask("lease-sweeper", settings.lease_sweep_interval_s, scheduler.expire_leases),
        ]

    async def start(self, host: str = "[::]") -> int:
        """Binds ``GRPC_PORT`` (0: any free port), starts the background tasks; returns the port."""
        port = await self.grpc_server.start(self.settings.grpc_port, host=host)
        for task in self._tasks:
            task.start()
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, calls in flight finish within the grace; then tasks, then clients."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        await self.grpc_server.stop(grace)
        for task in self._tasks:
            await task.stop()
        await self._session.close()


async def create_service(
    settings: SchedulerSettings,
    registry: CollectorRegistry = REGISTRY,
    *,
    node_registry: NodeRegistry | None = None,
    policy: Policy | None = None,
) -> SchedulerService:
    """Builds the service (nothing listens until ``start()``); call inside the running loop."""
    metrics = SchedulerMetrics(registry)
    nodes = node_registry or InMemoryNodeRegistry(
        lease_ttl_s=settings.lease_ttl_s,
        unhealthy_after_failures=settings.unhealthy_after_failures,
    )
    scheduler = NodeScheduler(nodes, policy or LeastLoadedPolicy(), metrics)
    metrics.refresh_nodes(await nodes.list_nodes())
    grpc_server = GrpcServer(GrpcMetrics(registry))
    grpc_server.add_service(
        SERVICE_NAME, pb_grpc.add_SchedulerServiceServicer_to_server, SchedulerServicer(scheduler)
    )
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.health_probe_timeout_s),
        headers={"User-Agent": "cic-scheduler"},
    )
    prober = HealthProber(nodes, session, settings.health_probe_timeout_s, metrics)
    return SchedulerService(settings, grpc_server, scheduler, prober, session)


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
