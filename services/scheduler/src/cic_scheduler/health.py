"""Active health checks: every node's ``GET {endpoint}/health``, all nodes probed concurrently.

Each probe feeds the node's circuit breaker through ``registry.record_probe``: a failure counts
as a node failure, a success closes a half-open breaker. With several replicas only the signals
collector (:class:`SignalsLeadership`) probes, so failures are counted once, not once per replica.
"""

from __future__ import annotations

import logging

import aiohttp

from cic_scheduler.background import spread_over
from cic_scheduler.leadership import SignalsLeadership, holds_collector
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.nodes import NodeView
from cic_scheduler.registry import NodeRegistry, live_nodes
from cic_scheduler.watch import NodeChanges

log = logging.getLogger(__name__)


def health_url(endpoint: str) -> str:
    return f"{endpoint.rstrip('/')}/health"


class HealthProber:
    """One probe round per call of :meth:`probe_all`, through the service's one HTTP session."""

    def __init__(
        self,
        registry: NodeRegistry,
        session: aiohttp.ClientSession,
        timeout_s: float,
        metrics: SchedulerMetrics,
        leadership: SignalsLeadership | None = None,
        changes: NodeChanges | None = None,
    ) -> None:
        self._registry = registry
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._metrics = metrics
        self._leadership = leadership
        self._changes = changes

    async def probe_all(self, spread_s: float = 0.0) -> None:
        """Probes every node once, their starts spread evenly over ``spread_s`` seconds."""
        if not await holds_collector(self._leadership, self._metrics):
            self._metrics.refresh_nodes(await self._registry.list_nodes())
            return
        await spread_over(await live_nodes(self._registry), self._probe, spread_s)
        self._metrics.refresh_nodes(await self._registry.list_nodes())

    async def _probe(self, node: NodeView) -> None:
        failure = await self._check(node.endpoint)
        if failure is not None:
            self._metrics.probe_failures.inc()
            log.debug("health probe of node %s failed: %s", node.id, failure)
        after = await self._registry.record_probe(node.id, node.endpoint, ok=failure is None)
        if after is None or (after.healthy, after.breaker) == (node.healthy, node.breaker):
            return
        if self._changes is not None:
            await self._changes.node_changed(node.id)
        if after.healthy == node.healthy:
            return
        if after.healthy:
            log.info("node %s is healthy again", node.id)
        else:
            log.warning("node %s is unhealthy: %s", node.id, failure)

    async def _check(self, endpoint: str) -> str | None:
        """None when the node answered 2xx, else why not."""
        try:
            async with self._session.get(
                health_url(endpoint), timeout=self._timeout, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return "timed out"
        except aiohttp.ClientError as err:
            return f"{type(err).__name__}: {err}"
