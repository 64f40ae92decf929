"""Node lifecycle: launch or adopt a node, wait for its /health, hand it to the scheduler; drain
and terminate it; record every step in Postgres.

Requests answer at once; the slow part runs in one background task per node. A terminate
waits for the node's launch task to notice (at its next /health poll) before it ends the node,
so a process is never left behind by a launch and a terminate crossing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc

from cic_common.events_bus import EventBus, EventKind
from cic_common.periodic import cancel_and_wait
from cic_orchestrator import labels
from cic_orchestrator.config import Settings
from cic_orchestrator.health_probe import HealthProbe
from cic_orchestrator.labels import check_region
from cic_orchestrator.metrics import OrchestratorMetrics
from cic_orchestrator.nodes import (
    LIVE_STATES,
    NodeConflict,
    NodeNotFound,
    NodeRecord,
    NodeSpec,
    NodeState,
    check_node_id,
    new_agent_token,
    new_node_id,
)
from cic_orchestrator.providers import Providers
from cic_orchestrator.providers.base import LaunchError, NodeProvider
from cic_orchestrator.scheduler_client import SchedulerClient
from cic_orchestrator.store import NodeStore
from cic_orchestrator.validation import (
    check_accelerators,
    check_cloud,
    check_endpoint,
    check_model,
)

log = logging.getLogger(__name__)

EXTERNAL = "external"
# Why nodes a replica ended when it lost the leader lock failed; the next leader replaces them.
LOST_LEADERSHIP = "lost: its orchestrator replica stopped leading"
# Best-effort scheduler calls made while something else waits (shutdown, failures).
QUICK_CALL_S = 2.0


@dataclass(frozen=True)
class _Unhealthy:
    outcome: str  # launches_total outcome: failed, timeout, cancelled
    reason: str
    spot_refused: bool = False  # the provider could not provision it (no spot capacity)


class NodeLifecycle:
    def __init__(
        self,
        settings: Settings,
        store: NodeStore,
        providers: Providers,
        scheduler: SchedulerClient,
        probe: HealthProbe,
        metrics: OrchestratorMetrics,
        events: EventBus | None = None,
        leading: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._settings = settings
        # Asks whether this replica still holds the leader lock (None: it always leads).
        self._leading = leading
        self._events = events  # node.failed, node.preempted (None: no REDIS_URL)
        self._store = store
        self._providers = providers
        self._scheduler = scheduler
        self._probe = probe
        self._metrics = metrics
        self._current: dict[str, asyncio.Task[None]] = {}  # the task that owns each node now
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: set[str] = set()  # nodes a terminate asked to stop launching
        # Preempted nodes: when the machine goes (the drain waits no longer than that).
        self._gone_at: dict[str, float] = {}

    # --- requests -------------------------------------------------------------------------

    async def launch(
        self,
        model: str,
        accelerators: str,
        cloud: str,
        vllm_args: Sequence[str],
        use_spot: bool = False,
        replaces: str = "",
    ) -> NodeRecord:
        spec, provider = await self._checked_spec(
            model, accelerators, cloud, vllm_args, use_spot, replaces
        )
        record = await self._store.insert(spec, provider.name, NodeState.LAUNCHING)
        log.info(
            "node %s: launching %s on %s%s%s",
            record.id,
            model,
            provider.name,
            " (spot)" if use_spot else "",
            f" to replace {replaces}" if replaces else "",
        )
        self._run(record.id, self._bring_up(record, provider, launch=True, spec=spec))
        await self.refresh_gauges()
        return record

    async def check_launch(
        self,
        model: str,
        accelerators: str,
        cloud: str,
        vllm_args: Sequence[str],
        use_spot: bool = False,
    ) -> tuple[str, ...]:
        """Checks a launch as LaunchNode would (for scaling policies); returns the flags
        normalised."""
        spec, _ = await self._checked_spec(model, accelerators, cloud, vllm_args, use_spot)
        return spec.vllm_args

    async def _checked_spec(
        self,
        model: str,
        accelerators: str,
        cloud: str,
        vllm_args: Sequence[str],
        use_spot: bool,
        replaces: str = "",
    ) -> tuple[NodeSpec, NodeProvider]:
        check_model(model)
        check_accelerators(accelerators)
        provider = self._providers.for_cloud(check_cloud(cloud))
        args = tuple(provider.check_vllm_args(vllm_args))
        spec = NodeSpec(
            new_node_id(),
            model,
            accelerators,
            cloud,
            args,
            use_spot,
            agent_token=new_agent_token(),
            replaces=replaces,
        )
        await provider.check_spec(spec)
        return spec, provider

    async def adopt(self, endpoint: str, model: str, region: str = "") -> NodeRecord:
        check_model(model)
        spec = NodeSpec(new_node_id(), model)
        handle = {labels.HANDLE_KEY: {"region": region}} if check_region(region) else {}
        record = await self._store.insert(
            spec, EXTERNAL, NodeState.LAUNCHING, endpoint=check_endpoint(endpoint), handle=handle
        )
        log.info(
            "node %s: adopting %s at %s%s",
            record.id,
            model,
            record.endpoint,
            f" in region {region}" if region else "",
        )
        self._run(record.id, self._bring_up(record, self._provider(record), launch=False))
        await self.refresh_gauges()
        return record

    async def terminate(self, node_id: str) -> NodeRecord:
        record = await self.get(node_id)
        if record.state is NodeState.DRAINING and node_id in self._stopping:
            return record
        draining = await self._store.transition(node_id, LIVE_STATES, NodeState.DRAINING)
        if draining is None:
            record = await self.get(node_id)
            raise NodeConflict(f"node {node_id} is already {record.state.value}")
        log.info("node %s: terminating (was %s)", node_id, draining.previous_state)
        self.resume_retire(draining)
        await self.refresh_gauges()
        return draining

    async def terminate_model(self, model: str) -> list[str]:
        """Drains and terminates every launched live node of ``model`` (a deployment deleted);
        registered servers are left alone. Returns the ids."""
        ended = []
        for record in await self._store.list((NodeState.LAUNCHING, NodeState.READY)):
            if record.model == model and record.provider != EXTERNAL:
                try:
                    await self.terminate(record.id)
                except NodeConflict:
                    continue  # ended meanwhile
                ended.append(record.id)
        return ended

    async def get(self, node_id: str) -> NodeRecord:
        record = await self._store.get(check_node_id(node_id))
        if record is None:
            raise NodeNotFound(f"no node {node_id}")
        return record

    async def list(self, states: Sequence[NodeState] = ()) -> list[NodeRecord]:
        return await self._store.list(states)

    # --- background work ------------------------------------------------------------------

    def busy(self, node_id: str) -> bool:
        """Whether a launch or terminate task owns the node now."""
        return node_id in self._current

    def resume_bring_up(self, record: NodeRecord) -> None:
        """Waits again for the /health of a node a previous run left launching or ready."""
        self._run(record.id, self._bring_up(record, self._provider(record), launch=False))

    def resume_retire(self, record: NodeRecord) -> None:
        """Drains (if it got traffic) and terminates a node already marked draining."""
        self._stopping.add(record.id)
        drain = record.previous_state in (None, NodeState.READY, NodeState.DRAINING)
        self._run(record.id, self._retire(record.id, self._current.get(record.id), drain))

    async def fail(
        self,
        record: NodeRecord,
        reason: str,
        allowed_from: Sequence[NodeState] = LIVE_STATES,
        spot_refused: bool = False,
    ) -> None:
        """Marks the node failed, ends whatever remains of it, takes it out of the scheduler;
        a node lost after it was ready is replaced (REPLACE_LOST_NODES), and a refused spot
        launch is launched again on-demand (SPOT_FALLBACK_ON_DEMAND). A replica that no longer
        leads leaves the record as it is: the next leader finds the node gone, fails it and
        replaces it (two replicas acting on one failure would each launch a replacement, or the
        old one end the replacement it launched as it steps down)."""
        if not await self._still_leading():
            log.warning(
                "node %s: %s; left to the leader (this replica no longer leads)", record.id, reason
            )
            return
        failed = await self._store.transition(record.id, allowed_from, NodeState.FAILED, reason)
        if failed is None:
            return
        log.warning("node %s: failed: %s", record.id, reason)
        # Out of the scheduler first (before anything that may wait, such as a slow event
        # bus), then the event, a replacement, and the end of what remains (a cluster's
        # teardown can take a while).
        if failed.previous_state in (NodeState.READY, NodeState.DRAINING):
            await self.deregister_quietly(failed.id)
        await self._publish(EventKind.NODE_FAILED, failed, reason=reason)
        if failed.previous_state is NodeState.READY:
            await self.replace(failed, use_spot=failed.use_spot)
        elif spot_refused and failed.use_spot and self._settings.spot_fallback_on_demand:
            await self.replace(failed, use_spot=False)
        try:
            await self._provider(failed).terminate(failed.id, failed.provider_handle)
        except Exception as err:
            # What remains of it is found again by the reconcile loop (it is no live node's).
            log.warning("node %s: cannot end what remains of it yet: %s", record.id, err)
        await self.refresh_gauges()

    async def _still_leading(self) -> bool:
        return self._leading is None or await self._leading()

    async def replace(self, record: NodeRecord, use_spot: bool) -> NodeRecord | None:
        """Launches one node like ``record`` (once per node; never for registered servers)."""
        if record.provider == EXTERNAL or not self._settings.replace_lost_nodes:
            return None
        if not await self._still_leading():
            log.warning("node %s: not replaced here: this replica no longer leads", record.id)
            return None
        if not await self._store.claim_replacement(record.id):
            return None
        try:
            new = await self.launch(
                record.model,
                record.accelerators,
                record.cloud,
                record.vllm_args,
                use_spot,
                replaces=record.id,
            )
        except Exception as err:
            log.error("node %s: cannot launch a replacement: %s", record.id, err)
            await self._store.set_replaced_by(record.id, "")
            return None
        await self._store.set_replaced_by(record.id, new.id)
        kind = "spot" if use_spot else "on-demand"
        log.info("node %s: replaced by %s (%s)", record.id, new.id, kind)
        return new

    async def preempted(self, record: NodeRecord, not_after: datetime | None = None) -> NodeRecord:
        """The cloud reclaims the node: no new traffic at once, a replacement launched, then
        the usual drain and terminate (in-flight requests finish, within DRAIN_TIMEOUT_S)."""
        try:
            await self._scheduler.drain(record.id)
        except grpc.aio.AioRpcError as err:
            log.warning("node %s: cannot drain at once: %s", record.id, err.code())
        draining = await self._store.transition(
            record.id, (NodeState.LAUNCHING, NodeState.READY), NodeState.DRAINING
        )
        if draining is None:
            return await self.get(record.id)
        log.warning("node %s: preempted (%s); draining", record.id, record.preemption or "notice")
        await self._publish(EventKind.NODE_PREEMPTED, draining, notice=record.preemption)
        if draining.previous_state is NodeState.READY:
            await self.replace(draining, use_spot=draining.use_spot)
        if not_after is not None:
            left_s = (not_after - datetime.now(UTC)).total_seconds()
            self._gone_at[record.id] = time.monotonic() + max(left_s, 0.0)
        self.resume_retire(draining)
        await self.refresh_gauges()
        return draining

    async def _publish(self, kind: EventKind, record: NodeRecord, **detail: str) -> None:
        """Tells the event bus (never raises; the bus logs what it could not publish)."""
        if self._events is None:
            return
        data = {
            "node_id": record.id,
            "model": record.model,
            "provider": record.provider,
            "cloud": record.cloud,
            "previous_state": record.previous_state.value if record.previous_state else "",
            **detail,
        }
        await self._events.publish(kind, None, data)

    async def pause(self) -> None:
        """Cancels the background tasks and leaves every node as it is (leadership paused);
        the next ``reconcile()`` takes the nodes up again."""
        await asyncio.gather(*(cancel_and_wait(task) for task in list(self._tasks)))

    async def shutdown(self, leadership_lost: bool = False) -> None:
        """Cancels the background tasks, ends the nodes that must not outlive this process and
        marks them terminated (nodes it merely adopted keep running). When leadership was lost
        (the process goes on as a standby) they are marked failed as lost instead, so that the
        next leader replaces them."""
        await self.pause()
        for provider in self._providers:
            ended = await provider.shutdown()
            await asyncio.gather(*(self._mark_ended(node_id, leadership_lost) for node_id in ended))
        try:
            await self.refresh_gauges()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("cannot count the nodes while stopping: %s", err)

    async def refresh_gauges(self) -> None:
        self._metrics.set_node_counts(await self._store.count_by_state())

    async def register_quietly(self, record: NodeRecord) -> None:
        try:
            await self._scheduler.register(record)
            log.info("node %s: registered with the scheduler", record.id)
        except grpc.aio.AioRpcError as err:
            # The heartbeat loop registers it once the scheduler answers.
            log.warning("node %s: cannot register with the scheduler: %s", record.id, err.code())

    async def deregister_quietly(self, node_id: str) -> None:
        try:
            await self._scheduler.deregister(node_id, timeout_s=QUICK_CALL_S)
        except grpc.aio.AioRpcError as err:
            log.warning("node %s: cannot deregister from the scheduler: %s", node_id, err.code())

    def _provider(self, record: NodeRecord) -> NodeProvider:
        provider = self._providers.get(record.provider)
        if provider is None:
            raise LookupError(f"node {record.id} has unknown provider {record.provider}")
        return provider

    def _run(self, node_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=f"node {node_id}")
        self._current[node_id] = task
        self._tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if self._current.get(node_id) is done:
                del self._current[node_id]

        task.add_done_callback(forget)

    async def _mark_ended(self, node_id: str, lost: bool) -> None:
        await self.deregister_quietly(node_id)
        try:
            if lost:
                await self._store.transition(
                    node_id, LIVE_STATES, NodeState.FAILED, LOST_LEADERSHIP
                )
            else:
                await self._store.transition(node_id, LIVE_STATES, NodeState.TERMINATED)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            # Postgres is away (often why the lead was lost): the row stays live, and the next
            # leader finds the node gone, fails it as lost and replaces it.
            log.warning("node %s: ended, but cannot record it: %s", node_id, err)
            return
        if lost:
            log.warning("node %s: ended as this replica stopped leading", node_id)
        else:
            log.info("node %s: terminated with the orchestrator", node_id)

    async def _bring_up(
        self,
        record: NodeRecord,
        provider: NodeProvider,
        launch: bool,
        spec: NodeSpec | None = None,
    ) -> None:
        started = time.monotonic()
        try:
            outcome = await self._launch_and_wait(record, provider, launch, spec or record.spec)
        except asyncio.CancelledError:
            self._metrics.launches.labels(provider.name, "cancelled").inc()
            raise
        except Exception:
            log.exception("node %s: launch failed", record.id)
            await self.fail(record, "internal error while launching")
            outcome = "failed"
        self._metrics.launches.labels(provider.name, outcome).inc()
        if outcome == "ready":
            self._metrics.launch_duration.labels(provider.name).observe(time.monotonic() - started)

    async def _launch_and_wait(
        self, record: NodeRecord, provider: NodeProvider, launch: bool, spec: NodeSpec
    ) -> str:
        timeout_s = provider.launch_timeout_s or self._settings.launch_timeout_s
        deadline = time.monotonic() + timeout_s
        if launch:
            try:
                launched = await provider.launch(spec)
            except LaunchError as err:
                await self.fail(record, str(err), spot_refused=True)
                return "failed"
            record = (
                await self._store.set_launched(record.id, launched.endpoint, launched.handle)
                or record
            )
        unhealthy: _Unhealthy | None = None
        if not record.endpoint:
            provisioned = await self._wait_provisioned(record, provider, deadline, timeout_s)
            if isinstance(provisioned, _Unhealthy):
                unhealthy = provisioned
            else:
                record = provisioned
        if unhealthy is None:
            unhealthy = await self._wait_healthy(record, provider, deadline, timeout_s)
        if unhealthy is not None:
            if unhealthy.outcome != "cancelled":
                await self.fail(
                    record,
                    unhealthy.reason,
                    (NodeState.LAUNCHING, NodeState.READY),
                    spot_refused=unhealthy.spot_refused,
                )
            return unhealthy.outcome
        # In the scheduler's rotation first, so that a node seen READY here takes traffic (a
        # terminate crossing this deregisters it).
        await self.register_quietly(record)
        ready = await self._store.transition(
            record.id, (NodeState.LAUNCHING, NodeState.READY), NodeState.READY
        )
        if ready is None:
            return "cancelled"
        log.info("node %s: ready at %s", ready.id, ready.endpoint)
        await self.refresh_gauges()
        return "ready"

    async def _wait_provisioned(
        self, record: NodeRecord, provider: NodeProvider, deadline: float, timeout_s: float
    ) -> NodeRecord | _Unhealthy:
        """Waits for the provider to bring the node's machine up and stores its endpoint;
        gives up at the deadline or when a terminate asks."""
        waiting = asyncio.create_task(provider.provisioned(record.id, record.provider_handle))
        try:
            while not waiting.done():
                if record.id in self._stopping:
                    return _Unhealthy("cancelled", "terminated while launching")
                if time.monotonic() >= deadline:
                    return _Unhealthy("timeout", f"not up within {timeout_s:g}s")
                await asyncio.wait([waiting], timeout=self._settings.health_poll_interval_s)
            up = waiting.result()
        except LaunchError as err:
            return _Unhealthy("failed", str(err), spot_refused=True)
        finally:
            waiting.cancel()
        log.info("node %s: machine up at %s", record.id, up.endpoint)
        stored = await self._store.set_launched(record.id, up.endpoint, up.handle)
        return stored or record

    async def _wait_healthy(
        self, record: NodeRecord, provider: NodeProvider, deadline: float, timeout_s: float
    ) -> _Unhealthy | None:
        while record.id not in self._stopping:
            if await self._probe.is_healthy(record.endpoint):
                return None
            status = await provider.status(record.id, record.provider_handle)
            if not status.alive:
                return _Unhealthy("failed", f"{status.reason} before /health answered")
            if time.monotonic() >= deadline:
                return _Unhealthy("timeout", f"/health did not answer within {timeout_s:g}s")
            await asyncio.sleep(self._settings.health_poll_interval_s)
        return _Unhealthy("cancelled", "terminated while launching")

    async def _retire(
        self, node_id: str, launching: asyncio.Task[None] | None, drain: bool
    ) -> None:
        if launching is not None:
            await asyncio.wait([launching])
        try:
            record = await self.get(node_id)
            if drain:
                await self._drain(node_id)
            await self._provider(record).terminate(node_id, record.provider_handle)
            await self.deregister_quietly(node_id)
            if await self._store.transition(node_id, (NodeState.DRAINING,), NodeState.TERMINATED):
                log.info("node %s: terminated", node_id)
            await self.refresh_gauges()
        except Exception:
            log.exception("node %s: terminate failed; it stays draining", node_id)
        finally:
            self._stopping.discard(node_id)
            self._gone_at.pop(node_id, None)

    async def _drain(self, node_id: str) -> None:
        """Stops new traffic, then waits until the scheduler counts nothing in flight on the
        node (or DRAIN_TIMEOUT_S passes)."""
        deadline = min(
            time.monotonic() + self._settings.drain_timeout_s,
            self._gone_at.pop(node_id, math.inf),
        )
        drained = warned = False
        while True:
            try:
                if not drained and not await self._scheduler.drain(node_id):
                    return  # the scheduler does not know it: it gets no traffic
                drained = True
                in_flight = await self._scheduler.in_flight(node_id)
                if not in_flight:
                    return
            except grpc.aio.AioRpcError as err:
                if not warned:
                    log.warning("node %s: scheduler failed while draining: %s", node_id, err.code())
                warned = True
            if time.monotonic() >= deadline:
                log.warning("node %s: drain timed out; terminating anyway", node_id)
                return
            await asyncio.sleep(self._settings.health_poll_interval_s)
