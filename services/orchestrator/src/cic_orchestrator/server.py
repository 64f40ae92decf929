"""Builds the orchestrator: its pool, scheduler client, providers, lifecycle, leader election,
supervision and autoscaler loops and gRPC server, started and stopped together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY, CollectorRegistry

from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic_common.db import close_pool, open_pool
from cic_common.events_bus import EventBus
from cic_common.grpc_server import GrpcServer
from cic_common.metrics import GrpcMetrics
from cic_common.periodic import cancel_and_wait
from cic_common.redis import create_redis
from cic_orchestrator.agent_desk import AgentDesk
from cic_orchestrator.autoscaler import Autoscaler
from cic_orchestrator.config import Settings
from cic_orchestrator.health_probe import HealthProbe
from cic_orchestrator.leader import LeaderElection
from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.metrics import OrchestratorMetrics
from cic_orchestrator.node_logs import NodeLogs
from cic_orchestrator.policies import PolicyStore
from cic_orchestrator.providers import build_providers
from cic_orchestrator.scheduler_client import SchedulerClient
from cic_orchestrator.servicer import OrchestratorServicer
from cic_orchestrator.store import NodeStore
from cic_orchestrator.supervision import HealthRules, Supervisor

log = logging.getLogger(__name__)

SERVICE_NAME = "cic.orchestrator.v1.OrchestratorService"


class OrchestratorService:
    """``await start()`` serves gRPC and takes part in the leader election: the leader
    reconciles what a previous run left, runs the heartbeat, reconcile and autoscaler loops and
    answers calls; a standby answers UNAVAILABLE until it takes over. ``await stop()`` undoes
    it all in order, ends the local nodes and gives the lock up."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = OrchestratorMetrics(registry)
        self.grpc = GrpcServer(GrpcMetrics(registry))
        self.providers = build_providers(settings)
        self.scheduler = SchedulerClient(settings.scheduler_addr)
        self.probe = HealthProbe(settings.health_probe_timeout_s)
        self.election = LeaderElection(settings.database_url, settings.leader_poll_interval_s)
        self.node_logs = NodeLogs(settings.node_log_lines)
        # The event bus (node.failed, node.preempted); the client connects on first use.
        self._redis = create_redis(settings.redis_url, 8) if settings.redis_url else None
        self.events = (
            EventBus(self._redis, settings.redis_key_prefix, self.metrics.events)
            if self._redis is not None
            else None
        )
        self._pool = None
        self.lifecycle: NodeLifecycle | None = None
        self.supervisor: Supervisor | None = None
        self.autoscaler: Autoscaler | None = None
        self._leadership: asyncio.Task[None] | None = None
        self._active = False
        self._started = False
        # Whether every provider has finished warming up (see NodeProvider.warm_up).
        self._warm = False
        self._warming: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether this replica leads (and answers calls)."""
        return self._active

    async def open(self) -> None:
        self.node_logs.attach(logging.getLogger("cic_orchestrator"))
        self._pool = await open_pool(
            self.settings.database_url, "orchestrator", "cic_orchestrator.migrations"
        )
        store = NodeStore(self._pool)
        policies = PolicyStore(self._pool)
        s = self.settings
        self.lifecycle = NodeLifecycle(
            s,
            store,
            self.providers,
            self.scheduler,
            self.probe,
            self.metrics,
            self.events,
            leading=self.election.confirm,
        )
        self.supervisor = Supervisor(
            store,
            self.providers,
            self.scheduler,
            self.lifecycle,
            s.heartbeat_interval_s,
            s.reconcile_interval_s,
            self.probe,
            self.metrics,
            HealthRules(s.agent_silent_after_s, s.node_dead_after_s),
        )
        self.autoscaler = Autoscaler(
            policies,
            store,
            self.scheduler,
            self.lifecycle,
            self.metrics,
            s.autoscale_interval_s,
            s.scale_up_after_s,
            s.scale_down_after_s,
        )
        self.grpc.add_service(
            SERVICE_NAME,
            orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
            OrchestratorServicer(
                self.lifecycle,
                policies,
                AgentDesk(store, self.lifecycle),
                self.node_logs,
                lambda: self._active,
            ),
        )

    async def start(self, host: str = "[::]") -> int:
        # A replica that gets the lock at once leads before it takes its first call.
        if await self.election.try_acquire():
            await self._lead()
        port = await self.grpc.start(self.settings.grpc_port, host)
        self._started = True
        warming = [w for w in (p.warm_up() for p in self.providers) if w is not None]
        if warming:
            self._warming = asyncio.create_task(self._serve_when_warm(warming), name="warm-up")
        else:
            self._warm = True
        await self._set_serving(self._active)
        self._leadership = asyncio.create_task(self._follow_leadership(), name="leadership")
        log.info(
            "orchestrator serving gRPC on port %d (%s)",
            port,
            "active" if self._active else "standby",
        )
        return port

    async def _follow_leadership(self) -> None:
        while True:
            try:
                if not self.election.leading:
                    await self.election.acquire()
                if not self._active:
                    await self._lead()
                    await self._set_serving(True)
                await self.election.lost()
                # Paused, not ended: when only Postgres went away (a restart, a fail-over) the
                # nodes keep serving tenants and this replica leads on once it has the lock
                # again. Only when another replica has taken it are this one's nodes ended.
                await self._pause()
                if await self.election.regain():
                    continue
            except Exception:
                # Never hold the lock without leading: give it to another replica.
                log.exception("leader: taking over failed; giving the lock up")
                await self.election.release()
                await asyncio.sleep(self.settings.leader_poll_interval_s)
            await self._step_down()

    async def _lead(self) -> None:
        assert self.supervisor is not None and self.autoscaler is not None
        await self.supervisor.reconcile()
        self.supervisor.start()
        self.autoscaler.start()
        self._active = True
        self.metrics.leader.set(1)

    async def _pause(self) -> None:
        """Stops answering and every loop and node task; the nodes themselves run on."""
        self._active = False
        self.metrics.leader.set(0)
        self._clear_gauges()  # at once, and again once no task can refresh them
        await self._set_serving(False)
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.lifecycle is not None:
            await self.lifecycle.pause()
        self._clear_gauges()

    async def _step_down(self) -> None:
        """Leadership lost to another replica: paused, and the nodes this process runs ended
        (marked failed as lost, so that the new leader replaces them)."""
        await self._pause()
        try:
            if self.lifecycle is not None:
                await self.lifecycle.shutdown(leadership_lost=True)
        except Exception:
            # Postgres is often why the lead was lost; what could not be recorded is found by
            # the next leader. The loop must go on, to take the lead again.
            log.exception("leader: stepping down did not finish cleanly")
        finally:
            self._clear_gauges()

    def _clear_gauges(self) -> None:
        """Only the leader reports nodes and wishes (a standby's would be counted twice)."""
        self.metrics.set_node_counts({})
        self.metrics.desired_nodes.clear()
        self.metrics.time_to_first_token.clear()

    async def _serve_when_warm(self, warming: list[Awaitable[None]]) -> None:
        started = time.monotonic()
        for outcome in await asyncio.gather(*warming, return_exceptions=True):
            if isinstance(outcome, Exception):  # its calls will fail and say why
                log.error("a provider failed to warm up: %r", outcome)
        self._warm = True
        log.info("providers warm after %.1f s", time.monotonic() - started)
        await self._set_serving(self._active)

    async def _set_serving(self, serving: bool) -> None:
        """The orchestrator service's own health follows leadership (a readiness probe on it
        sends calls to the leader only), once the providers are warm; the server's overall
        health stays SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving and self._warm
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        if self._started:
            await self.grpc.health.set(SERVICE_NAME, status)

    async def stop(self) -> None:
        """Health NOT_SERVING and the gRPC server stopped, loops cancelled, local nodes ended
        and marked terminated, the lock given up, clients and pool closed. Safe to call twice."""
        self._active = False
        if self._started:
            await self.grpc.stop(self.settings.shutdown_grace_s)
            self._started = False
        await cancel_and_wait(self._warming)
        self._warming = None
        await cancel_and_wait(self._leadership)
        self._leadership = None
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.lifecycle is not None:
            await self.lifecycle.shutdown()
        await self.election.release()
        self.node_logs.detach(logging.getLogger("cic_orchestrator"))
        self.metrics.leader.set(0)
        self._clear_gauges()
        await self.probe.close()
        await self.scheduler.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._pool is not None:
            await close_pool(self._pool)
            self._pool = None
        self.lifecycle = self.supervisor = self.autoscaler = None


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
