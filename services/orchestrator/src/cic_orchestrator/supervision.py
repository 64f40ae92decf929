"""What keeps nodes, providers and the scheduler in step over time: the heartbeat loop, the
reconcile of nodes a previous run (or a dead leader) left behind, and a slower loop that ends
what providers run for no live node (a crash between a launch and its record, a terminate
that failed) and retries terminations left stuck in ``draining``."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from cic_common.periodic import cancel_and_wait
from cic_orchestrator.health import Signals, judge, takes_traffic
from cic_orchestrator.health_probe import HealthProbe
from cic_orchestrator.lifecycle import LOST_LEADERSHIP, NodeLifecycle
from cic_orchestrator.metrics import OrchestratorMetrics
from cic_orchestrator.nodes import LIVE_STATES, NodeHealth, NodeRecord, NodeState
from cic_orchestrator.providers import Providers
from cic_orchestrator.scheduler_client import SchedulerClient, is_unreachable
from cic_orchestrator.store import NodeStore

log = logging.getLogger(__name__)

LOST_ON_RESTART = "lost: orchestrator restarted"


@dataclass(frozen=True)
class HealthRules:
    agent_silent_after_s: float = 30.0
    dead_after_s: float = 120.0


class Supervisor:
    def __init__(
        self,
        store: NodeStore,
        providers: Providers,
        scheduler: SchedulerClient,
        lifecycle: NodeLifecycle,
        heartbeat_interval_s: float,
        reconcile_interval_s: float = 60.0,
        probe: HealthProbe | None = None,
        metrics: OrchestratorMetrics | None = None,
        rules: HealthRules = HealthRules(),
    ) -> None:
        self._probe = probe or HealthProbe()
        self._metrics = metrics
        self._rules = rules
        self._store = store
        self._providers = providers
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._interval_s = heartbeat_interval_s
        self._reconcile_interval_s = reconcile_interval_s
        self._loops: list[asyncio.Task[None]] = []

    async def reconcile(self) -> None:
        """Takes over the live nodes of a previous run: a node its provider can no longer reach
        fails as lost (and is replaced if it was ready); the others are probed again (draining
        ones: terminated). Nodes a replica ended when it lost the lead are replaced."""
        records = await self._store.list(LIVE_STATES)
        await asyncio.gather(*(self._reconcile_one(record) for record in records))
        for record in await self._store.list((NodeState.FAILED,)):
            if record.failure_reason == LOST_LEADERSHIP and not record.replaced_by:
                await self._lifecycle.replace(record, use_spot=record.use_spot)
        await self._lifecycle.refresh_gauges()

    async def _reconcile_one(self, record: NodeRecord) -> None:
        provider = self._providers.get(record.provider)
        if provider is None:
            log.warning("node %s: provider %s is unknown; left alone", record.id, record.provider)
        elif not await provider.reclaim(record.id, record.provider_handle):
            await self._lifecycle.fail(record, LOST_ON_RESTART)
        elif record.state is NodeState.DRAINING:
            self._lifecycle.resume_retire(record)
        else:
            self._lifecycle.resume_bring_up(record)

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._reconciles(), name="reconcile"),
        ]

    async def stop(self) -> None:
        await asyncio.gather(*(cancel_and_wait(loop) for loop in self._loops))
        self._loops = []

    async def _reconciles(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval_s)
            try:
                await self.reconcile_providers()
            except Exception:
                log.exception("reconcile round failed")

    async def reconcile_providers(self) -> None:
        """Ends what providers run for no live node; retries stuck terminations."""

        async def live_ids() -> set[str]:
            return {r.id for r in await self._store.list(LIVE_STATES)}

        for provider in self._providers:
            try:
                ended = await provider.orphans(live_ids)
            except Exception as err:
                log.warning("provider %s: cannot look for orphans: %s", provider.name, err)
                continue
            if ended:
                log.warning("provider %s: ended %d orphan(s)", provider.name, len(ended))
        for record in await self._store.list((NodeState.DRAINING,)):
            if not self._lifecycle.busy(record.id):
                log.info("node %s: terminating again (left draining)", record.id)
                self._lifecycle.resume_retire(record)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.heartbeat_once()
            except Exception:
                log.exception("heartbeat round failed")

    async def heartbeat_once(self) -> None:
        """For each ready node no task owns: judges its health from the three signals (see
        :mod:`cic_orchestrator.health`); a dead node fails (and is replaced), a healthy one is
        heartbeated to the scheduler (registered again when it was forgotten or out of
        rotation), any other is kept out of the scheduler's rotation."""
        scheduler_reachable = True
        counts: Counter[str] = Counter()
        for record in await self._store.list((NodeState.READY,)):
            if self._lifecycle.busy(record.id):
                continue
            provider = self._providers.get(record.provider)
            if provider is None:
                continue
            status = await provider.status(record.id, record.provider_handle)
            probe_ok = status.alive and await self._probe.is_healthy(record.endpoint)
            health = judge(
                _signals(record, status.alive, probe_ok),
                self._rules.agent_silent_after_s,
                self._rules.dead_after_s,
            )
            await self._store.set_health(record.id, health, probe_ok)
            if health is not record.health:
                log.info("node %s: %s -> %s", record.id, record.health or "new", health)
            if health is NodeHealth.DEAD:
                reason = status.reason if not status.alive else _dead_reason(record)
                await self._lifecycle.fail(record, reason, (NodeState.READY,))
                continue
            counts[health.value] += 1
            if not scheduler_reachable or self._lifecycle.busy(record.id):
                # A terminate that began while this node was judged owns it now: a heartbeat
                # sent after its drain would put it back in rotation.
                continue
            if takes_traffic(health):
                was_out = not takes_traffic(record.health)
                scheduler_reachable = await self._heartbeat(record, back_in_rotation=was_out)
            else:
                scheduler_reachable = await self._out_of_rotation(record)
        if self._metrics is not None:
            self._metrics.set_health_counts(counts)

    async def _out_of_rotation(self, record: NodeRecord) -> bool:
        try:
            await self._scheduler.drain(record.id)
        except grpc.aio.AioRpcError as err:
            if is_unreachable(err):
                return False
            log.warning("node %s: cannot take it out of rotation: %s", record.id, err.code().name)
        return True

    async def _heartbeat(self, record: NodeRecord, back_in_rotation: bool = False) -> bool:
        """False when the scheduler cannot be reached (the rest of the round skips it)."""
        try:
            if back_in_rotation:
                log.info("node %s: healthy again; back in rotation", record.id)
                await self._scheduler.register(record)
            elif not await self._scheduler.heartbeat(record.id):
                log.info("node %s: unknown to the scheduler; registering it again", record.id)
                await self._scheduler.register(record)
        except grpc.aio.AioRpcError as err:
            if is_unreachable(err):
                log.warning("scheduler unreachable (%s); heartbeats skipped", err.code().name)
                return False
            log.warning("node %s: heartbeat failed: %s", record.id, err.code().name)
        return True


def _signals(record: NodeRecord, machine_alive: bool, probe_ok: bool) -> Signals:
    now = datetime.now(UTC)
    failing_since = record.probe_failing_since
    return Signals(
        machine_alive=machine_alive,
        probe_ok=probe_ok,
        probe_failing_for_s=0.0
        if probe_ok or failing_since is None
        else (now - failing_since).total_seconds(),
        agent_silent_for_s=None
        if record.agent_seen_at is None
        else (now - record.agent_seen_at).total_seconds(),
        agent_vllm_healthy=record.agent_vllm_healthy,
    )


def _dead_reason(record: NodeRecord) -> str:
    if record.agent_seen_at is not None and record.agent_vllm_healthy is False:
        return "/health failing; the agent last reported vLLM failing too"
    return "/health and agent silent"
