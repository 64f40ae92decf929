"""The simulated engine: admission (max-num-seqs, hang), fault rolls, per-request accounting.

Accounting rules (what ``/sim/stats`` and ``/metrics`` report):
- prompt tokens count when a request is admitted (its prefill starts);
- completion tokens count when the chunk carrying them has been handed to the socket
  (streams) or when the whole answer has (non-streaming); a request cut off early has
  produced only what it sent;
- every admitted choice ends as stop, length or abort; a request cut before admission ends
  as one abort.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from types import TracebackType
from typing import Any

from aiohttp import web

from cic_vllm_sim.config import Knobs, SimConfig
from cic_vllm_sim.metrics import SimMetrics


class Stats:
    """Counters behind ``GET /sim/stats``."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.aborted = 0
        self.dropped = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0


class Engine:
    """Scheduler state shared by every request of one simulated node."""

    def __init__(self, config: SimConfig, metrics: SimMetrics) -> None:
        self.config = config
        self.knobs = Knobs.from_config(config)
        self.metrics = metrics
        self.stats = Stats()
        self.running = 0
        self.waiting = 0
        self.kv_tokens = 0
        self._slots = asyncio.Semaphore(config.max_num_seqs)
        self._released = asyncio.Event()
        self._released.set()
        self._faults = random.Random(config.seed)
        metrics.watch(
            running=lambda: self.running,
            waiting=lambda: self.waiting,
            kv_cache_usage=lambda: min(1.0, self.kv_tokens / config.kv_cache_tokens),
        )

    def update_knobs(self, changes: dict[str, Any]) -> None:
        """Apply a validated subset of the knobs (see `control.parse_knobs`)."""
        for name, value in changes.items():
            setattr(self.knobs, name, value)
        if self.knobs.hang:
            self._released.clear()
        else:
            self._released.set()

    def roll_failure(self) -> bool:
        """Whether this request is answered with an injected 500."""
        rate = self.knobs.fail_rate
        failed = rate > 0.0 and self._faults.random() < rate
        self.stats.failed += failed
        return failed

    def roll_drop(self) -> bool:
        """Whether this stream has its connection dropped part way."""
        rate = self.knobs.drop_rate
        return rate > 0.0 and self._faults.random() < rate

    def admit(self, prompt_tokens: int) -> Admission:
        """``async with engine.admit(n) as run:`` waits for a slot, then accounts the request."""
        return Admission(self, prompt_tokens)

    def stats_dict(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "model": self.config.model_name,
            "requests": dict(stats.requests),
            "running": self.running,
            "waiting": self.waiting,
            "aborted": stats.aborted,
            "dropped": stats.dropped,
            "failed": stats.failed,
            "finished": dict(stats.finished),
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
        }

    async def _acquire(self) -> None:
        if not self._released.is_set():
            await self._released.wait()
        await self._slots.acquire()

    def _release(self) -> None:
        self._slots.release()


class Run:
    """One admitted request: what it has produced and how its choices ended."""

    def __init__(self, engine: Engine, arrival: float, prompt_tokens: int) -> None:
        self._engine = engine
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.reasons: list[str] = []
        self._last_token_at: float | None = None

    def delivered(self, tokens: int) -> None:
        """``tokens`` more completion tokens have reached the socket."""
        now = time.monotonic()
        metrics = self._engine.metrics
        if self._last_token_at is None:
            metrics.time_to_first_token.observe(now - self.arrival)
        else:
            metrics.inter_token_latency.observe(now - self._last_token_at)
        self._last_token_at = now
        self.completion_tokens += tokens
        self._engine.kv_tokens += tokens
        self._engine.stats.completion_tokens += tokens
        metrics.generation_tokens.inc(tokens)

    def finish(self, reason: str) -> None:
        """One choice ended (stop, length or abort)."""
        self.reasons.append(reason)


class Admission:
    """The async context manager `Engine.admit` returns."""

    def __init__(self, engine: Engine, prompt_tokens: int) -> None:
        self._engine = engine
        self._prompt_tokens = prompt_tokens
        self._run: Run | None = None

    async def __aenter__(self) -> Run:
        engine, arrival = self._engine, time.monotonic()
        engine.waiting += 1
        try:
            await engine._acquire()
        except BaseException:
            engine.stats.aborted += 1
            engine.stats.finished["abort"] += 1
            engine.metrics.request_success["abort"].inc()
            raise
        finally:
            engine.waiting -= 1
        engine.running += 1
        engine.kv_tokens += self._prompt_tokens
        engine.stats.prompt_tokens += self._prompt_tokens
        engine.metrics.prompt_tokens.inc(self._prompt_tokens)
        self._run = Run(engine, arrival, self._prompt_tokens)
        return self._run

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        engine, run = self._engine, self._run
        assert run is not None
        if exc_type is not None or not run.reasons or "abort" in run.reasons:
            reasons = [r for r in run.reasons if r != "abort"] + ["abort"]
            engine.stats.aborted += 1
        else:
            reasons = run.reasons
        metrics = engine.metrics
        for reason in reasons:
            metrics.request_success[reason].inc()
            engine.stats.finished[reason] += 1
        metrics.e2e_request_latency.observe(time.monotonic() - run.arrival)
        metrics.request_prompt_tokens.observe(run.prompt_tokens)
        metrics.request_generation_tokens.observe(run.completion_tokens)
        engine.running -= 1
        engine.kv_tokens -= run.prompt_tokens + run.completion_tokens
        engine._release()


ENGINE = web.AppKey("engine", Engine)
