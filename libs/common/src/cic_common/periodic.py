"""A background job that runs a piece of work every so often, for as long as its service runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def every(
    interval_s: float, work: Callable[[], Awaitable[object]], log: logging.Logger, what: str
) -> None:
    """Awaits ``work()`` every ``interval_s`` seconds (the first time after one interval) until
    cancelled. A round that raises is logged with ``what`` and the next one runs as planned: one
    bad round never ends the job."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await work()
        except Exception:
            log.exception("%s failed; trying again in %ss", what, interval_s)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancels a background job (None: there is none) and waits until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
