"""Background work that repeats on an interval while the service runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PeriodicTask:
    """Runs ``action`` every ``interval_s`` (the first time after one interval) until stopped.
    A round that fails is logged and the next round runs as usual."""

    def __init__(self, name: str, interval_s: float, action: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._interval_s = interval_s
        self._action = action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._action()
            except Exception:
                log.exception("%s: round failed", self.name)
