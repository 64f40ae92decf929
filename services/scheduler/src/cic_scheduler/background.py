"""Background work that repeats on an interval while the service runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from cic_common.periodic import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")


class PeriodicTask:
    """Runs ``action`` every ``interval_s`` (the first time after one interval) until stopped:
    rounds start on a fixed clock, so a round that takes part of the interval does not stretch
    the period; one that overruns it is followed at once by the next. A round that fails is
    logged and the next round runs as usual."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._interval_s = interval_s
        self._action = action
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        await cancel_and_wait(task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval_s
        while not self._stopping:
            await asyncio.sleep(max(due - loop.time(), 0.0))
            try:
                await self._action()
            except Exception:
                log.exception("%s: round failed", self.name)
            due = max(due + self._interval_s, loop.time())


async def spread_over(
    items: Sequence[T], action: Callable[[T], Awaitable[object]], spread_s: float
) -> None:
    """Runs ``action`` on every item concurrently, their starts spread evenly over
    ``spread_s`` seconds: a round over many nodes then does not stall the event loop all at
    once. With ``spread_s`` 0 every action starts at once."""
    step = spread_s / max(len(items), 1)

    async def one(delay_s: float, item: T) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await action(item)

    await asyncio.gather(*(one(i * step, item) for i, item in enumerate(items)))
