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
import re
import time
from collections.abc import Iterable

import aiohttp

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


# A sample line of one of the gauges read here: name, then the rest of the line.
# (No ``^``: a pattern that starts with a literal is searched for as fast as a string; the
# match is then checked to start a line.)
_WANTED_LINE = re.compile(
    r"vllm:(?:num_requests_running|num_requests_waiting|kv_cache_usage_perc"
    r"|gpu_cache_usage_perc)(?=[{ \t])[^\n]*"
)
# The rest: an optional {label="value",...} block, the value, an optional timestamp.
_REST = re.compile(r'(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t\r]*$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _labels(block: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    at = 0
    while at < len(block):
        match = _LABEL.match(block, at)
        if match is None:
            raise ValueError(f"bad labels {{{block}}}")
        value = match.group(2)
        if "\\" in value:
            value = re.sub(r"\\.", lambda m: _ESCAPES.get(m.group(0), m.group(0)), value)
        labels[match.group(1)] = value
        at = match.end()
    return labels


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of the gauges read here, by name. Only their lines are looked at (a vLLM page
    holds hundreds of histogram lines): one regular-expression scan of the page, then each of
    the few matching lines parsed as Prometheus's text format writes it."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in _WANTED}
    for match in _WANTED_LINE.finditer(text):
        start = match.start()
        if start and text[start - 1] != "\n":
            continue  # inside another line (a label value, a comment)
        line = match.group(0)
        cut = min(i for i in (line.find("{"), line.find(" "), line.find("\t")) if i >= 0)
        rest = _REST.match(line, cut)
        if rest is None:
            raise ValueError(f"bad sample line {line[:200]!r}")
        labels = _labels(rest.group(1)) if rest.group(1) else {}
        samples[line[:cut]].append((labels, float(rest.group(2))))
    return samples


def _values_for_model(samples: Iterable[tuple[dict[str, str], float]], model: str) -> list[float]:
    """The values of the samples labelled with ``model``; all of them when none is (a node
    serves one model, which it may export under another name than the registered one)."""
    listed = list(samples)
    own = [value for labels, value in listed if labels.get("model_name") == model]
    return own if own else [value for _, value in listed]


def parse_load(text: str, model: str, scraped_at: float) -> LoadSample:
    """The load in a vLLM ``/metrics`` page: request counts summed over the label sets (one per
    engine) of ``model``; KV-cache usage the fullest engine's, clamped to 0..1."""
    try:
        samples = _samples(text)
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
