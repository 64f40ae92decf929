"""A background job that runs a piece of work every so often, for as long as its service runs."""

from __future__ import annotations

import asyncio
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


_STOP_RETRY_S = 0.5


async def cancel_and_wait(task: asyncio.Task[Any] | None, grace_s: float = 0.0) -> None:
    """Cancels ``task`` (None: there is none) and waits for it to end, cancelling again while it
    runs on: a library that swallows one cancellation (redis-py's asyncio client can, on Python
    3.11, as can ``asyncio.wait_for``) must not keep a shutdown waiting for ever. Given
    ``grace_s``, the task first has that long to end on its own. A failure the task ended with
    is logged, not raised."""
    if task is None:
        return
    if grace_s > 0 and not task.done():
        await asyncio.wait({task}, timeout=grace_s)
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_STOP_RETRY_S)
    if not task.cancelled() and task.exception() is not None:
        logging.getLogger(__name__).warning("%s ended with %r", task.get_name(), task.exception())
