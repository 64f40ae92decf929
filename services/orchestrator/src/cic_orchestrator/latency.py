"""The autoscaler's latency signal: each ready node's time to first token, read from vLLM's own
``/metrics`` (the ``vllm:time_to_first_token_seconds`` histogram).

The histogram is cumulative, so a model's latency is the mean over what happened between two
looks: the growth of its nodes' ``_sum`` over the growth of their ``_count``. A node seen for
the first time (or whose counters went back, a restart) only sets the baseline; a model none of
whose nodes started a request since the last look has no latency (None).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cic_orchestrator.nodes import NodeRecord

log = logging.getLogger(__name__)

TTFT_METRIC = "vllm:time_to_first_token_seconds"
_MAX_METRICS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Sample:
    total_s: float
    count: float


class LatencyProbe:
    """Scrapes nodes' ``/metrics`` (each scrape bounded by ``timeout_s``)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._last: dict[str, _Sample] = {}  # by node id

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._last.clear()

    async def ttft_ms_by_model(self, nodes: Iterable[NodeRecord]) -> dict[str, float]:
        """The mean time to first token (ms) of each model's ``nodes`` since the last call;
        models with no new first token are left out."""
        nodes = [n for n in nodes if n.endpoint]
        samples = await asyncio.gather(*(self._scrape(n) for n in nodes))
        total_s: dict[str, float] = {}
        count: dict[str, float] = {}
        for node, sample in zip(nodes, samples, strict=True):
            if sample is None:
                continue
            before = self._last.get(node.id)
            self._last[node.id] = sample
            if before is None or sample.count < before.count or sample.total_s < before.total_s:
                continue  # a baseline (a new node, or one whose server restarted)
            total_s[node.model] = total_s.get(node.model, 0.0) + sample.total_s - before.total_s
            count[node.model] = count.get(node.model, 0.0) + sample.count - before.count
        seen = {n.id for n in nodes}
        for node_id in set(self._last) - seen:
            del self._last[node_id]
        return {model: 1000.0 * total_s[model] / n for model, n in count.items() if n > 0}

    async def _scrape(self, node: NodeRecord) -> _Sample | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(
                f"{node.endpoint}/metrics", allow_redirects=False
            ) as reply:
                if reply.status != 200:
                    return None
                text = (await reply.content.read(_MAX_METRICS_BYTES)).decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as err:
            log.debug("node %s: cannot read /metrics: %s", node.id, err)
            return None
        try:
            return _ttft(text)
        except ValueError:
            log.warning("node %s: /metrics is not Prometheus text", node.id)
            return None


def _ttft(text: str) -> _Sample | None:
    """The TTFT histogram's totals. Only its own lines are parsed: parsing all of vLLM's
    /metrics (100+ KB, several histograms) would hold the event loop for tens of ms per node."""
    own = (TTFT_METRIC, f"# HELP {TTFT_METRIC} ", f"# TYPE {TTFT_METRIC} ")
    text = "".join(line for line in text.splitlines(keepends=True) if line.startswith(own))
    for family in text_string_to_metric_families(text):
        if family.name != TTFT_METRIC:
            continue
        sums = _by_suffix(family.samples, "_sum")
        counts = _by_suffix(family.samples, "_count")
        return _Sample(sum(sums.values()), sum(counts.values()))
    return None


def _by_suffix(samples: Iterable[Sample], suffix: str) -> Mapping[str, float]:
    """Each labelled series' value of the family's ``suffix`` samples."""
    return {
        repr(sorted(s.labels.items())): float(s.value)
        for s in samples
        if s.name == TTFT_METRIC + suffix
    }
