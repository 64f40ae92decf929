"""What keeps nodes, providers and the scheduler in step over time: the heartbeat loop, the
reconcile of nodes a previous run (or a dead leader) left behind, and a slower loop that ends
what providers run for no live node (a crash between a launch and its record, a terminate
that failed) and retries terminations left stuck in ``draining``."""

from __future__ import annotations

import asyncio
import logging

import grpc

from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.nodes import LIVE_STATES, NodeRecord, NodeState
from cic_orchestrator.providers import Providers
from cic_orchestrator.scheduler_client import SchedulerClient, is_unreachable
from cic_orchestrator.store import NodeStore

log = logging.getLogger(__name__)

LOST_ON_RESTART = "lost: orchestrator restarted"


class Supervisor:
    def __init__(
        self,
        store: NodeStore,
        providers: Providers,
        scheduler: SchedulerClient,
        lifecycle: NodeLifecycle,
        heartbeat_interval_s: float,
        reconcile_interval_s: float = 60.0,
    ) -> None:
        self._store = store
        self._providers = providers
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._interval_s = heartbeat_interval_s
        self._reconcile_interval_s = reconcile_interval_s
        self._loops: list[asyncio.Task[None]] = []

    async def reconcile(self) -> None:
        """Takes over the live nodes of a previous run: a node its provider can no longer reach
        fails as lost; the others are probed again (draining ones: terminated)."""
        records = await self._store.list(LIVE_STATES)
        await asyncio.gather(*(self._reconcile_one(record) for record in records))
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
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
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
        """For each ready node no task owns: fails it if its process is gone, else heartbeats
        it, registering it again when the scheduler has forgotten it."""
        scheduler_reachable = True
        for record in await self._store.list((NodeState.READY,)):
            if self._lifecycle.busy(record.id):
                continue
            provider = self._providers.get(record.provider)
            if provider is None:
                continue
            status = await provider.status(record.id, record.provider_handle)
            if not status.alive:
                await self._lifecycle.fail(record, status.reason, (NodeState.READY,))
            elif scheduler_reachable:
                scheduler_reachable = await self._heartbeat(record)

    async def _heartbeat(self, record: NodeRecord) -> bool:
        """False when the scheduler cannot be reached (the rest of the round skips it)."""
        try:
            if not await self._scheduler.heartbeat(record.id):
                log.info("node %s: unknown to the scheduler; registering it again", record.id)
                await self._scheduler.register(record)
        except grpc.aio.AioRpcError as err:
            if is_unreachable(err):
                log.warning("scheduler unreachable (%s); heartbeats skipped", err.code().name)
                return False
            log.warning("node %s: heartbeat failed: %s", record.id, err.code().name)
        return True
