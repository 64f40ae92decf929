"""The load signal: every node's own vLLM ``GET {endpoint}/metrics``, scraped concurrently.

Each round reads ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and the KV-cache
usage (``vllm:kv_cache_usage_perc``, or the older ``vllm:gpu_cache_usage_perc`` where a node still
exposes only that) and stores them with ``registry.update_load``. A node whose ``/metrics`` fails
keeps its last sample; readers judge its age by ``LoadSample.scraped_at``.

With several scheduler replicas sharing one registry, only the holder of :class:`SignalsLeadership`
scrapes (and probes), so each node is scraped once per interval whatever the replica count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cic_scheduler.background import spread_over
from cic_scheduler.leadership import SignalsLeadership, holds_collector
from cic_scheduler.metrics import SchedulerMetrics
from cic_scheduler.nodes import LoadSample, NodeView
from cic_scheduler.registry import NodeRegistry, live_nodes

log = logging.getLogger(__name__)

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"  # older vLLM; read only where the new one is absent
_WANTED = (RUNNING, WAITING, KV_CACHE_USAGE, GPU_CACHE_USAGE)
MAX_METRICS_BYTES = 8 * 1024 * 1024


class NotVllmMetrics(ValueError):
    """The page lacks the request-count gauges every vLLM node exports."""


def metrics_url(endpoint: str) -> str:
    return f"{endpoint.rstrip('/')}/metrics"


def _wanted_lines(text: str) -> str:
    """Only the lines about the gauges read here: a vLLM page holds hundreds of histogram lines,
    and parsing them every half second for every node would be wasted work."""
    kept = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") else line
        if name.startswith(_WANTED):
            kept.append(line)
    kept.append("")
    return "\n".join(kept)


def _values_for_model(samples: Iterable[tuple[dict[str, str], float]], model: str) -> list[float]:
    """The values of the samples labelled with ``model``; all of them when none is (a node
    serves one model, which it may export under another name than the registered one)."""
    listed = list(samples)
    own = [value for labels, value in listed if labels.get("model_name") == model]
    return own if own else [value for _, value in listed]


def parse_load(text: str, model: str, scraped_at: float) -> LoadSample:
    """The load in a vLLM ``/metrics`` page: request counts summed over the label sets (one per
    engine) of ``model``; KV-cache usage the fullest engine's, clamped to 0..1."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in _WANTED}
    try:
        for family in text_string_to_metric_families(_wanted_lines(text)):
            for sample in family.samples:
                if sample.name in samples:
                    samples[sample.name].append((sample.labels, sample.value))
    except ValueError as err:
        raise NotVllmMetrics(f"unparsable metrics: {err}") from None
    if not samples[RUNNING] and not samples[WAITING]:
        raise NotVllmMetrics(f"no {RUNNING} or {WAITING} in the page")
    cache_name = KV_CACHE_USAGE if samples[KV_CACHE_USAGE] else GPU_CACHE_USAGE
    cache = _values_for_model(samples[cache_name], model)
    return LoadSample(
        running=sum(_values_for_model(samples[RUNNING], model)),
        waiting=sum(_values_for_model(samples[WAITING], model)),
        kv_cache_usage=min(max(max(cache, default=0.0), 0.0), 1.0),
        scraped_at=scraped_at,
    )


class LoadScraper:
    """One scrape round of every node per call of :meth:`scrape_all`."""

    def __init__(
        self,
        registry: NodeRegistry,
        session: aiohttp.ClientSession,
        timeout_s: float,
        metrics: SchedulerMetrics,
        leadership: SignalsLeadership | None = None,
    ) -> None:
        self._registry = registry
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._metrics = metrics
        self._leadership = leadership

    async def scrape_all(self, spread_s: float = 0.0) -> None:
        """Scrapes every node once, their starts spread evenly over ``spread_s`` seconds."""
        if await holds_collector(self._leadership, self._metrics):
            await spread_over(await live_nodes(self._registry), self.scrape, spread_s)

    async def scrape(self, node: NodeView) -> LoadSample | None:
        """Scrapes one node and stores its sample; None (and nothing stored) when it failed."""
        try:
            text = await self._fetch(node.endpoint)
            sample = parse_load(text, node.model, time.time())
        except (TimeoutError, aiohttp.ClientError, NotVllmMetrics, UnicodeDecodeError) as err:
            self._metrics.load_scrape_failures.inc()
            log.debug("load scrape of node %s failed: %s", node.id, err or type(err).__name__)
            return None
        await self._registry.update_load(node.id, sample)
        return sample

    async def _fetch(self, endpoint: str) -> str:
        async with self._session.get(
            metrics_url(endpoint), timeout=self._timeout, allow_redirects=False
        ) as response:
            response.raise_for_status()
            body = await response.content.read(MAX_METRICS_BYTES)
            return body.decode()
