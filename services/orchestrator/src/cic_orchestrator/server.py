"""Builds the orchestrator: its pool, scheduler client, providers, lifecycle, heartbeat loop
and gRPC server, started and stopped together."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry

from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic_common.db import open_pool
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics
from cic_orchestrator.config import Settings
from cic_orchestrator.health_probe import HealthProbe
from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.metrics import OrchestratorMetrics
from cic_orchestrator.providers import build_providers
from cic_orchestrator.scheduler_client import SchedulerClient
from cic_orchestrator.servicer import OrchestratorServicer
from cic_orchestrator.store import NodeStore
from cic_orchestrator.supervision import Supervisor

log = logging.getLogger(__name__)

SERVICE_NAME = "cic.orchestrator.v1.OrchestratorService"


class OrchestratorService:
    """``await start()`` reconciles what a previous run left, starts the heartbeat loop and
    serves gRPC; ``await stop()`` undoes it all in order and ends the local nodes."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = OrchestratorMetrics(registry)
        self.grpc = GrpcServer(GrpcMetrics(registry))
        self.providers = build_providers(settings)
        self.scheduler = SchedulerClient(settings.scheduler_addr)
        self.probe = HealthProbe()
        self._pool = None
        self.lifecycle: NodeLifecycle | None = None
        self.supervisor: Supervisor | None = None
        self._started = False

    async def open(self) -> None:
        self._pool = await open_pool(
            self.settings.database_url, "orchestrator", "cic_orchestrator.migrations"
        )
        store = NodeStore(self._pool)
        self.lifecycle = NodeLifecycle(
            self.settings, store, self.providers, self.scheduler, self.probe, self.metrics
        )
        interval_s = self.settings.heartbeat_interval_s
        self.supervisor = Supervisor(
            store, self.providers, self.scheduler, self.lifecycle, interval_s
        )
        self.grpc.add_service(
            SERVICE_NAME,
            orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
            OrchestratorServicer(self.lifecycle),
        )

    async def start(self, host: str = "[::]") -> int:
        assert self.supervisor is not None
        await self.supervisor.reconcile()
        self.supervisor.start()
        port = await self.grpc.start(self.settings.grpc_port, host)
        self._started = True
        log.info("orchestrator serving gRPC on port %d", port)
        return port

    async def stop(self) -> None:
        """Health NOT_SERVING and the gRPC server stopped, loops cancelled, local nodes ended
        and marked terminated, clients and pool closed. Safe to call twice."""
        if self._started:
            await self.grpc.stop(self.settings.shutdown_grace_s)
            self._started = False
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.lifecycle is not None:
            await self.lifecycle.shutdown()
        await self.probe.close()
        await self.scheduler.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self.lifecycle = self.supervisor = None


async def create_service(
    settings: Settings, registry: CollectorRegistry = REGISTRY
) -> OrchestratorService:
    """The orchestrator with its pool open and schema migrated, ready to ``start()``."""
    service = OrchestratorService(settings, registry)
    try:
        await service.open()
    except BaseException:
        await service.stop()
        raise
    return service
