"""The autoscaler: keeps each model with a scaling policy at the number of nodes its load asks.

Every AUTOSCALE_INTERVAL_S it reads the load signal — the scheduler's queue (requests running
and waiting on each model's ready nodes) and, for policies with a ``target_latency_ms``, the
nodes' mean time to first token since the last look (:mod:`cic_orchestrator.latency`) — and
compares the nodes the policy wants with the nodes the model has (launching or ready). Latency
above target asks one node more than the model has (none while one is still launching) and
holds off any scale-down. Below ``min_nodes`` it launches at once; above demand it launches
only once the demand has lasted SCALE_UP_AFTER_S (30 s by default, where SkyServe waits
300 s); below demand for SCALE_DOWN_AFTER_S it terminates the least busy node, which drains
first (the scheduler stops sending it traffic and the node is ended at zero in flight).
Nodes registered by endpoint (external) count but are never terminated.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence

import grpc

from cic_common.periodic import cancel_and_wait
from cic_orchestrator.latency import LatencyProbe
from cic_orchestrator.lifecycle import NodeLifecycle
from cic_orchestrator.metrics import OrchestratorMetrics
from cic_orchestrator.nodes import NodeError, NodeRecord, NodeState
from cic_orchestrator.policies import PolicyStore, ScalingPolicy
from cic_orchestrator.scheduler_client import SchedulerClient
from cic_orchestrator.store import NodeStore

log = logging.getLogger(__name__)

EXTERNAL = "external"


class Autoscaler:
    def __init__(
        self,
        policies: PolicyStore,
        store: NodeStore,
        scheduler: SchedulerClient,
        lifecycle: NodeLifecycle,
        metrics: OrchestratorMetrics,
        interval_s: float,
        scale_up_after_s: float,
        scale_down_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        latency: LatencyProbe | None = None,
    ) -> None:
        self._latency = latency or LatencyProbe()
        self._policies = policies
        self._store = store
        self._scheduler = scheduler
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._interval_s = interval_s
        self._up_after_s = scale_up_after_s
        self._down_after_s = scale_down_after_s
        self._clock = clock
        # When each model's wish to grow (shrink) began; dropped when it stops.
        self._wants_more_since: dict[str, float] = {}
        self._wants_fewer_since: dict[str, float] = {}
        # When the autoscaler last launched for each model: below min_nodes it launches at
        # once, but not again within SCALE_UP_AFTER_S (launches that keep failing).
        self._launched_at: dict[str, float] = {}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="autoscaler")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        self._loop = None
        self._wants_more_since.clear()
        self._wants_fewer_since.clear()
        self._launched_at.clear()
        await self._latency.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except grpc.aio.AioRpcError as err:
                log.warning("autoscaler: scheduler unavailable (%s); no decision", err.code().name)
            except Exception:
                log.exception("autoscaler round failed")
            await asyncio.sleep(self._interval_s)

    async def round(self) -> None:
        """One look at every policy (the scheduler is asked once)."""
        policies = await self._policies.list()
        if not policies:
            return
        queued = await self._scheduler.queued_by_model()
        live = await self._store.list((NodeState.LAUNCHING, NodeState.READY))
        timed = {p.model for p in policies if p.target_latency_ms > 0}
        latency = await self._latency.ttft_ms_by_model(
            n for n in live if n.state is NodeState.READY and n.model in timed
        )
        for policy in policies:
            nodes = [n for n in live if n.model == policy.model]
            await self._scale(
                policy, queued.get(policy.model, 0.0), nodes, latency.get(policy.model)
            )
        known = {p.model for p in policies}
        for timers in (self._wants_more_since, self._wants_fewer_since, self._launched_at):
            for model in set(timers) - known:
                del timers[model]

    async def _scale(
        self,
        policy: ScalingPolicy,
        queued: float,
        nodes: list[NodeRecord],
        latency_ms: float | None = None,
    ) -> None:
        model, now = policy.model, self._clock()
        current = len(nodes)
        launching = any(n.state is NodeState.LAUNCHING for n in nodes)
        desired = policy.desired_nodes(queued, current, latency_ms, launching)
        self._metrics.desired_nodes.labels(model).set(desired)
        if policy.target_latency_ms > 0 and latency_ms is not None:
            self._metrics.time_to_first_token.labels(model).set(latency_ms / 1000.0)
        if desired > current:
            self._wants_fewer_since.pop(model, None)
            since = self._wants_more_since.setdefault(model, now)
            below_min = current < policy.min_nodes and (
                now - self._launched_at.get(model, -math.inf) >= self._up_after_s
            )
            if below_min or now - since >= self._up_after_s:
                await self._launch(policy, desired - current, queued, latency_ms)
                self._wants_more_since.pop(model, None)
                self._launched_at[model] = now
        elif desired < current:
            self._wants_more_since.pop(model, None)
            since = self._wants_fewer_since.setdefault(model, now)
            if now - since >= self._down_after_s:
                await self._remove_one(policy, nodes, queued)
                self._wants_fewer_since.pop(model, None)
        else:
            self._wants_more_since.pop(model, None)
            self._wants_fewer_since.pop(model, None)

    async def _launch(
        self, policy: ScalingPolicy, count: int, queued: float, latency_ms: float | None
    ) -> None:
        log.info(
            "autoscaler: %s: %g queued, time to first token %s, launching %d node(s)",
            policy.model,
            queued,
            "unknown" if latency_ms is None else f"{latency_ms:.0f} ms",
            count,
        )
        for _ in range(count):
            try:
                accelerators, vllm_args = policy.launch_resources()
                await self._lifecycle.launch(
                    policy.model,
                    accelerators,
                    policy.launch_cloud,
                    list(vllm_args),
                    policy.use_spot,
                )
            except NodeError as err:
                log.error("autoscaler: %s: cannot launch: %s", policy.model, err)
                self._metrics.scaling_decisions.labels(policy.model, "up", "refused").inc()
                return
            self._metrics.scaling_decisions.labels(policy.model, "up", "launched").inc()

    async def _remove_one(
        self, policy: ScalingPolicy, nodes: Sequence[NodeRecord], queued: float
    ) -> None:
        """Terminates (drain first) the ready node with the fewest requests in flight."""
        candidates = [n for n in nodes if n.state is NodeState.READY and n.provider != EXTERNAL]
        if not candidates:
            return
        in_flight = await self._scheduler.in_flight_by_node()
        # Fewest in flight first; among equals the newest (the oldest have warm caches).
        candidates.sort(key=lambda n: (in_flight.get(n.id, 0), -n.created_at.timestamp()))
        chosen = candidates[0]
        log.info(
            "autoscaler: %s: %g queued on %d node(s); draining %s",
            policy.model,
            queued,
            len(nodes),
            chosen.id,
        )
        try:
            await self._lifecycle.terminate(chosen.id)
        except NodeError as err:
            log.warning("autoscaler: %s: cannot terminate %s: %s", policy.model, chosen.id, err)
            return
        self._metrics.scaling_decisions.labels(policy.model, "down", "drained").inc()
