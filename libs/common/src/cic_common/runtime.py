"""Process entry helpers: run a service's main coroutine on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import uvloop


def stop_event_on_signals() -> asyncio.Event:
    """An event set on the first SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Runs ``main()`` on uvloop; ``main`` returns when its stop event is set."""
    uvloop.run(main())  # type: ignore[arg-type]
